"""A teacher version through the API: listed apart from the served versions, and servable
when an operator activates it (its forms were built like any version's)."""

from __future__ import annotations

from pathlib import Path

import torch

from app.ml.modeling import init_classifier, save_classifier
from app.registry import write_version
from app.store import versions
from tests.conftest import LABELS


def _teacher_version(api, encoder: Path) -> int:
    torch.manual_seed(0)
    model, tokenizer = init_classifier(encoder, LABELS)
    return write_version(
        api.settings,
        api.store,
        lambda folder: save_classifier(model, tokenizer, folder),
        labels=LABELS,
        parent_version=None,
        job_id=None,
        metrics={},
        lineage={"kind": "teacher", "start_path": str(encoder), "gold_train": 300},
        decision=versions.TEACHER,
    )


def test_teacher_versions_are_listed_apart_and_can_be_served(api, tiny_teacher: Path):
    teacher = _teacher_version(api, tiny_teacher)
    listed = {m["version"]: m for m in api.get("/models").json()}
    assert listed[teacher]["role"] == "teacher" and listed[1]["role"] == "served"
    assert [m["version"] for m in api.get("/models?role=teacher").json()] == [teacher]
    assert teacher not in [m["version"] for m in api.get("/models?role=served").json()]
    assert api.get("/models?role=student").status_code == 422

    fragment = api.get("/dashboard/fragments/versions").text
    served_table, teachers_table = fragment.split('id="teachers-table"')
    assert f'data-version="{teacher}"' in teachers_table
    assert f'data-version="{teacher}"' not in served_table

    # An operator who prefers quality to speed serves the teacher: its forms were built
    # and gated when it was recorded, like any version's.
    r = api.post(f"/models/{teacher}/activate")
    assert r.status_code == 200 and r.json()["active"] is True
    answer = api.post("/label", json={"text": "@united where is my bag"}).json()
    assert answer["model_version"] == teacher and answer["label"] in LABELS
    active = api.get("/models/active").json()
    assert active["served_version"] == teacher
    assert active["served_form"].startswith("onnxruntime")
