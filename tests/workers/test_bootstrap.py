"""The first model goes through the job's stages: fine-tuned with a job's parameters
(its precision choice included), evaluated, published through the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.config import Settings
from app.ml.job_params import JobParams
from app.ml.training import in_bf16
from app.registry import METADATA_FILE, version_dir
from app.store import versions
from app.store.database import Store
from workers.bootstrap import bootstrap_first_model


def test_the_first_model_is_trained_and_published_as_a_job_would(published_copy: Settings):
    meta = json.loads((version_dir(published_copy, 1) / METADATA_FILE).read_text())
    # The lineage records the job's parameters as declared (JobParams, nested), like a
    # retraining job's: the job's precision choice resolved for this CPU, the serving length.
    lineage = meta["lineage"]
    params = JobParams.model_validate(lineage["params"])
    assert lineage["bf16"] == in_bf16(JobParams())
    assert params.max_length == published_copy.max_length
    assert params.finetune.eval_every == JobParams().finetune.eval_every  # best dev checkpoint
    assert lineage["history"]["finetuning"]["loss"]
    # A few hundred gold texts are a handful of steps an epoch: the first model still gets
    # the floor of steps, so it learns more than the commonest class.
    last_step = lineage["history"]["finetuning"]["step"][-1]
    assert lineage["gold_train"] < 32 * params.finetune.min_steps / published_copy.bootstrap_epochs
    assert last_step + 1 == params.finetune.min_steps
    assert set(meta["metrics"]) == {"dev", "test"}
    assert (version_dir(published_copy, 1) / "model.onnx").is_file()  # exported at publish
    store = Store(published_copy.store_url)
    with store.session() as s:
        row = versions.get_version(s, 1)
        assert row is not None and row.decision == "published" and row.state == "ready"
        assert versions.active_version(s) == 1
    store.dispose()


def test_a_second_bootstrap_leaves_the_serving_model_alone(published_copy: Settings):
    store = Store(published_copy.store_url)
    before = sorted(p.name for p in published_copy.models_path.iterdir())
    assert bootstrap_first_model(published_copy, store) is None
    assert sorted(p.name for p in published_copy.models_path.iterdir()) == before
    with store.session() as s:
        assert [v.version for v in versions.list_versions(s)] == [1]
    store.dispose()


def test_gold_with_one_label_is_refused_before_training(settings: Settings, tmp_path: Path):
    one_label = tmp_path / "one-label.csv"
    one_label.write_text("text,label\n" + "".join(f"text {i},neutral\n" for i in range(30)))
    settings = settings.model_copy(update={"bootstrap_gold": str(one_label)})
    store = Store(settings.store_url)
    with pytest.raises(ValueError, match="at least two labels"):
        bootstrap_first_model(settings, store)
    assert not settings.models_path.exists() or not any(settings.models_path.iterdir())
    store.dispose()
