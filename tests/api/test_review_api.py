"""The review queues over HTTP: list, label, skip, fill, and the Label Studio and CSV
round trips; every refusal with its status, naming what is wrong, and changing nothing."""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.store import reviews
from app.store.database import Store
from app.store.reviews import Disagreement
from app.store.tables import GoldExample
from tests.conftest import LABEL_KEY, LABELS

EXPORT_FIXTURE = Path(__file__).parent / "fixtures" / "labelstudio_export.json"
TEXTS = [
    "@united is the 6am to Denver still on time",
    "@jetblue seat 14C or 22A, which is quieter?",
    "@southwestair thank you for the smooth flight home",
    "@united what is the baggage allowance to Lima",
    "@americanair gate changed again, no announcement",
]


def _fill(api, texts: list[str] = TEXTS, size: int = 50) -> dict[str, Any]:
    assert api.post("/label/batch", json={"texts": texts}).status_code == 200
    r = api.post("/review/queues/uncertainty/fill", json={"size": size})
    assert r.status_code == 200, r.text
    return r.json()


def _open(api, queue: str = "uncertainty", **params: Any) -> list[dict[str, Any]]:
    r = api.get(f"/review/queues/{queue}/items", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _gold(store: Store) -> dict[str, tuple[str, str, str]]:
    with store.session() as session:
        rows = session.execute(
            select(GoldExample.text, GoldExample.label, GoldExample.split, GoldExample.source)
        ).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows if r[3].startswith("review:")}


def _refused(response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    for fragment in fragments:
        assert fragment in str(body["detail"]), (fragment, body)


def _disagree(api, job_id: str, texts: list[str]) -> None:
    with api.store.session() as session:
        reviews.add_disagreements(
            session, job_id, 2, 1, [Disagreement(t, "positive", "negative", None) for t in texts]
        )


def test_queues_list_their_counts_and_the_classes(api):
    r = api.get("/review/queues")
    assert r.status_code == 200
    assert r.json() == {
        "classes": LABELS,
        "queues": [
            {"queue": "disagreement", "open": 0, "labeled": 0, "skipped": 0},
            {"queue": "uncertainty", "open": 0, "labeled": 0, "skipped": 0},
        ],
    }
    filled = _fill(api)
    assert filled["added"] == 5 and filled["open"] == 5 and filled["scanned"] == 5
    assert _fill(api)["added"] == 0  # each text is asked about once
    counts = {q["queue"]: q for q in api.get("/review/queues").json()["queues"]}
    assert counts["uncertainty"]["open"] == 5
    page = api.get("/review/queues/uncertainty/items", params={"limit": 2}).json()
    assert page["total"] == 5 and page["next_offset"] == 2 and len(page["items"]) == 2
    items = _open(api)
    scores = [i["score"] for i in items]
    assert scores == sorted(scores)  # smallest margin (least sure) first
    first = items[0]
    assert first["predicted_label"] in LABELS and first["model_version"] == 1
    assert first["score_kind"] == "margin" and first["status"] == "open"
    assert api.get(f"/review/items/{first['id']}").json() == first


def test_review_routes_need_an_admin_key(api):
    for method, path in [
        ("get", "/review/queues"),
        ("get", "/review/queues/uncertainty/items"),
        ("post", "/review/items/1/label"),
        ("post", "/review/queues/uncertainty/fill"),
        ("get", "/review/queues/uncertainty/export/csv"),
        ("get", "/review/labelstudio/config"),
    ]:
        assert getattr(api, method)(path, headers={"X-API-Key": ""}).status_code == 401, path
        refused = getattr(api, method)(path, headers={"X-API-Key": LABEL_KEY})
        assert refused.status_code == 403, path


def test_a_label_is_taken_once_and_an_uncertainty_label_becomes_gold_train(api):
    _fill(api)
    item = _open(api)[0]
    path = f"/review/items/{item['id']}/label"

    _refused(api.post(path, json={"label": "sarcastic"}), 422, "invalid", "'sarcastic'", "classes")
    _refused(api.post(path, json={"label": ""}), 422, "invalid")
    _refused(api.post(path, json={"label": "neutral", "via": "carrier pigeon"}), 422, "invalid")
    _refused(api.post("/review/items/99999/label", json={"label": "neutral"}), 404, "not_found")
    assert api.get(f"/review/items/{item['id']}").json()["status"] == "open"  # unchanged
    assert _gold(api.store) == {}

    r = api.post(path, json={"label": "neutral", "via": "cli", "annotator": "ana"})
    assert r.status_code == 200, r.text
    labeled = r.json()
    assert (labeled["status"], labeled["label"], labeled["labeled_via"]) == (
        "labeled",
        "neutral",
        "cli",
    )
    assert labeled["annotator"] == "ana" and labeled["labeled_at"]
    assert _gold(api.store) == {item["text"]: ("neutral", "train", "review:uncertainty")}

    _refused(api.post(path, json={"label": "positive"}), 409, "conflict", "already labeled")
    _refused(api.post(f"/review/items/{item['id']}/skip"), 409, "conflict")
    assert api.get(f"/review/items/{item['id']}").json()["label"] == "neutral"
    assert item["id"] not in [i["id"] for i in _open(api)]


def test_a_skipped_item_stays_labelable(api):
    _fill(api)
    item = _open(api)[0]
    skip = f"/review/items/{item['id']}/skip"
    assert api.post(skip, json={"via": "dashboard"}).json()["status"] == "skipped"
    assert api.post(skip).json()["status"] == "skipped"  # twice: harmless
    assert item["id"] not in [i["id"] for i in _open(api)]
    assert [i["id"] for i in _open(api, status="skipped")] == [item["id"]]
    r = api.post(f"/review/items/{item['id']}/label", json={"label": "negative"})
    assert r.status_code == 200 and r.json()["status"] == "labeled"


def test_a_disagreement_label_is_stored_and_not_yet_gold(api):
    _disagree(api, "job-a", ["@united two models, two answers"])
    _disagree(api, "job-b", ["@united another job"])
    [item] = _open(api, "disagreement", job_id="job-a")
    assert (item["candidate_label"], item["champion_label"]) == ("positive", "negative")
    assert (item["candidate_version"], item["champion_version"]) == (2, 1)
    r = api.post(f"/review/items/{item['id']}/label", json={"label": "negative"})
    assert r.status_code == 200
    assert _gold(api.store) == {}
    with api.store.session() as session:
        [judged] = reviews.labeled_disagreements(session, "job-a")
    assert judged.label == "negative" and judged.champion_label == "negative"
    _refused(api.get("/review/queues/disagreement/items?job_id=a%00b"), 422, "invalid")


def test_unknown_queues_are_not_found(api):
    for path in ("/review/queues/gold/items", "/review/queues/gold/export/csv"):
        _refused(api.get(path), 404, "not_found", "the queues are disagreement, uncertainty")
    _refused(
        api.post("/review/queues/gold/import/csv", json={"csv": "id,label\n1,neutral\n"}),
        404,
        "not_found",
    )
    assert api.post("/review/queues/disagreement/fill", json={}).status_code in (404, 405)


def test_labelstudio_config_names_every_class(api):
    r = api.get("/review/labelstudio/config")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    config = r.text
    assert '<Text name="text" value="$text"/>' in config
    assert '<Choices name="label" toName="text"' in config
    for label in LABELS:
        assert f'<Choice value="{label}"/>' in config


def _as_labelstudio_export(tasks: list[dict[str, Any]], answers: dict[int, Any]) -> list[Any]:
    """What Label Studio's Export > JSON gives back for imported `tasks` once annotated:
    `answers` maps a task's position to its class, "cancel" (skipped in Label Studio), or
    a list of (class, updated_at) for several annotators."""
    exported = []
    for n, task in enumerate(copy.deepcopy(tasks)):
        task_id = 500 + n
        for k, prediction in enumerate(task["predictions"]):
            prediction.update(
                id=900 + 10 * n + k,
                created_ago="3 hours",
                cluster=None,
                neighbors=None,
                mislabeling=0.0,
                created_at="2026-12-01T08:00:00.000000Z",
                updated_at="2026-12-01T08:00:00.000000Z",
                model=None,
                model_run=None,
                task=task_id,
                project=7,
            )
            prediction.setdefault("score", None)
            for result in prediction["result"]:
                result["id"] = f"pred{n}{k}"
        given = answers.get(n)
        if given is None:
            given = []
        elif not isinstance(given, list):
            given = [(given, "2026-12-01T09:00:00.000000Z")]
        annotations = []
        for k, (choice, when) in enumerate(given):
            cancelled = choice == "cancel"
            annotations.append(
                {
                    "id": 300 + 10 * n + k,
                    "completed_by": 1 + k,
                    "result": []
                    if cancelled
                    else [
                        {
                            "value": {"choices": [choice]},
                            "id": f"res{n}{k}",
                            "from_name": "label",
                            "to_name": "text",
                            "type": "choices",
                            "origin": "manual",
                        }
                    ],
                    "was_cancelled": cancelled,
                    "ground_truth": False,
                    "created_at": when,
                    "updated_at": when,
                    "draft_created_at": None,
                    "lead_time": 6.5,
                    "prediction": {},
                    "result_count": 0,
                    "unique_id": f"uuid-{n}-{k}",
                    "import_id": None,
                    "last_action": None,
                    "task": task_id,
                    "project": 7,
                    "updated_by": 1 + k,
                    "parent_prediction": None,
                    "parent_annotation": None,
                    "last_created_by": None,
                }
            )
        exported.append(
            {
                "id": task_id,
                "annotations": annotations,
                "file_upload": "1a2b3c4d-review-uncertainty.json",
                "drafts": [],
                **task,
                "created_at": "2026-12-01T08:00:00.000000Z",
                "updated_at": "2026-12-01T09:00:00.000000Z",
                "inner_id": n + 1,
                "total_annotations": sum(1 for a in annotations if not a["was_cancelled"]),
                "cancelled_annotations": sum(1 for a in annotations if a["was_cancelled"]),
                "total_predictions": len(task["predictions"]),
                "comment_count": 0,
                "unresolved_comment_count": 0,
                "last_comment_updated_at": None,
                "project": 7,
                "updated_by": 1,
                "comment_authors": [],
            }
        )
    return exported


def test_labelstudio_round_trip(api):
    _fill(api)
    r = api.get("/review/queues/uncertainty/export/labelstudio")
    assert r.status_code == 200, r.text
    assert "attachment" in r.headers["content-disposition"]
    tasks = r.json()
    items = _open(api)
    assert [t["data"]["text"] for t in tasks] == [i["text"] for i in items]
    first = tasks[0]
    assert first["data"]["pfp_review_id"] == items[0]["id"] == first["meta"]["pfp_review_id"]
    [prediction] = first["predictions"]
    assert prediction["model_version"] == "v1"
    assert prediction["score"] == pytest.approx(items[0]["score"], abs=1e-6)  # the margin
    assert prediction["result"] == [
        {
            "from_name": "label",
            "to_name": "text",
            "type": "choices",
            "value": {"choices": [items[0]["predicted_label"]]},
        }
    ]

    export = _as_labelstudio_export(
        tasks,
        {
            0: "negative",
            1: "cancel",
            # Two annotators: the newer answer is taken; a cancelled one after it is not.
            2: [
                ("neutral", "2026-12-01T09:00:00Z"),
                ("positive", "2026-12-01T10:00:00Z"),
                ("cancel", "2026-12-01T11:00:00Z"),
            ],
            # 3: not annotated yet
            4: "positive",
        },
    )
    r = api.post("/review/queues/uncertainty/import/labelstudio", json=export)
    assert r.status_code == 200, r.text
    assert r.json() == {"labeled": 3, "skipped": 1, "unchanged": 0, "unanswered": 1}
    ids = [t["data"]["pfp_review_id"] for t in tasks]
    views = {i: api.get(f"/review/items/{i}").json() for i in ids}
    assert [views[i]["status"] for i in ids] == ["labeled", "skipped", "labeled", "open", "labeled"]
    assert [views[i]["label"] for i in ids] == ["negative", None, "positive", None, "positive"]
    assert views[ids[2]]["annotator"] == "2" and views[ids[2]]["labeled_via"] == "labelstudio"
    assert len(_gold(api.store)) == 3

    # The same export again changes nothing.
    r = api.post("/review/queues/uncertainty/import/labelstudio", json=export)
    assert r.json() == {"labeled": 0, "skipped": 0, "unchanged": 4, "unanswered": 1}


def test_a_real_labelstudio_export_is_read_back_by_text(api):
    """A project whose tasks came in without our ids: each task is found by its text."""
    _fill(api, TEXTS[:4])
    export = json.loads(EXPORT_FIXTURE.read_text())
    r = api.post("/review/queues/uncertainty/import/labelstudio", json=export)
    assert r.status_code == 200, r.text
    assert r.json() == {"labeled": 2, "skipped": 1, "unchanged": 0, "unanswered": 1}
    by_text = {i["text"]: i for i in _open(api, status="labeled")}
    # Task 101: two annotators, the newer wins; its completed_by is a user object.
    assert by_text[TEXTS[0]]["label"] == "negative"
    assert by_text[TEXTS[0]]["annotator"] == "rosa@example.com"
    # Task 103: its newest annotation was cancelled, the one before it counts; drafts do not.
    assert by_text[TEXTS[2]]["label"] == "positive"
    assert [i["text"] for i in _open(api, status="skipped")] == [TEXTS[1]]
    assert [i["text"] for i in _open(api)] == [TEXTS[3]]


@pytest.mark.parametrize(
    ("mangle", "status", "code", "fragment"),
    [
        (lambda tasks: {"tasks": tasks}, 422, "invalid", "a list of tasks"),
        (lambda tasks: [*tasks[:1], "task"], 422, "invalid", "task 2"),
        (lambda tasks: [*tasks[:1], {"annotations": []}], 422, "invalid", "task 2"),
        (lambda tasks: [*tasks[:1], {"data": {"text": 7}}], 422, "invalid", "task 2: data.text"),
        (lambda tasks: [*tasks[:1], {"data": {}}], 422, "invalid", "task 2: neither"),
        (
            lambda tasks: [*tasks[:1], {"data": {"pfp_review_id": "x"}}],
            422,
            "invalid",
            "task 2: data.pfp_review_id",
        ),
        (lambda tasks: [*tasks[:1], _answered(tasks[1], "sarcastic")], 422, "invalid", "task 2"),
        (
            lambda tasks: [*tasks[:1], _answered(tasks[1], ["neutral", "positive"])],
            422,
            "invalid",
            "chose 2 classes",
        ),
        (
            lambda tasks: [*tasks[:1], _answered({"data": {"text": "never queued"}}, "neutral")],
            404,
            "not_found",
            "task 2: its text is not in the uncertainty queue",
        ),
        (
            lambda tasks: [*tasks[:1], _answered({"data": {"pfp_review_id": 9999}}, "neutral")],
            404,
            "not_found",
            "task 2: no review item 9999",
        ),
    ],
)
def test_a_bad_labelstudio_file_is_refused_naming_the_task_and_changes_nothing(
    api, mangle, status, code, fragment
):
    _fill(api)
    tasks = api.get("/review/queues/uncertainty/export/labelstudio").json()
    good = _answered(tasks[0], "negative")
    r = api.post("/review/queues/uncertainty/import/labelstudio", json=mangle([good, *tasks[1:]]))
    _refused(r, status, code, fragment)
    assert len(_open(api)) == 5 and _gold(api.store) == {}


def _answered(task: dict[str, Any], choice: str | list[str]) -> dict[str, Any]:
    choices = choice if isinstance(choice, list) else [choice]
    result = {
        "from_name": "label",
        "to_name": "text",
        "type": "choices",
        "value": {"choices": choices},
    }
    return {**task, "annotations": [{"result": [result], "was_cancelled": False}]}


def test_a_labelstudio_answer_that_contradicts_a_label_is_a_conflict(api):
    _fill(api)
    tasks = api.get("/review/queues/uncertainty/export/labelstudio").json()
    item_id = tasks[0]["data"]["pfp_review_id"]
    api.post(f"/review/items/{item_id}/label", json={"label": "neutral"})
    r = api.post(
        "/review/queues/uncertainty/import/labelstudio",
        json=[_answered(tasks[1], "positive"), _answered(tasks[0], "negative")],
    )
    _refused(r, 409, "conflict", "task 2", "already labeled 'neutral'")
    assert api.get(f"/review/items/{tasks[1]['data']['pfp_review_id']}").json()["status"] == "open"


def test_csv_round_trip(api):
    _fill(api)
    r = api.get("/review/queues/uncertainty/export/csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == ["id", "text", "label"]
    assert [row["text"] for row in rows] == [i["text"] for i in _open(api)]
    assert all(row["label"] == "" for row in rows)
    rows[0]["label"], rows[2]["label"] = "negative", " positive "
    rows[3]["id"] = ""  # found by its text instead
    rows[3]["label"] = "neutral"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["id", "text", "label"])
    writer.writeheader()
    writer.writerows(rows)
    r = api.post("/review/queues/uncertainty/import/csv", json={"csv": buffer.getvalue()})
    assert r.status_code == 200, r.text
    assert r.json() == {"labeled": 3, "skipped": 0, "unchanged": 0, "unanswered": 2}
    labeled = {i["text"]: i for i in _open(api, status="labeled")}
    assert labeled[rows[2]["text"]]["label"] == "positive"
    assert labeled[rows[3]["text"]]["labeled_via"] == "csv"
    assert len(_gold(api.store)) == 3
    exported = api.get("/review/queues/uncertainty/export/csv", params={"status": "labeled"})
    assert sorted(row["label"] for row in csv.DictReader(io.StringIO(exported.text))) == [
        "negative",
        "neutral",
        "positive",
    ]


@pytest.mark.parametrize(
    ("content", "status", "code", "fragment"),
    [
        ("text,answer\nx,neutral\n", 422, "invalid", "header row"),
        ("id,text,label\n{id},,neutral\nabc,,neutral\n", 422, "invalid", "row 2: the id"),
        ("id,text,label\n{id},,neutral\n,,positive\n", 422, "invalid", "row 2: neither"),
        ("id,text,label\n{id},,neutral\n{id},,angry\n", 422, "invalid", "row 2: unknown class"),
        ("id,text,label\n{id},,neutral\n{id},,positive\n", 422, "invalid", "row 1 and row 2"),
        ("id,text,label\n{id},,neutral\n,nowhere,positive\n", 404, "not_found", "row 2"),
        ("id,text,label\n{id},not its text,neutral\n", 422, "invalid", "row 1: its text"),
        ('id,text,label\n{id},"open quote,neutral\n', 422, "invalid", "not CSV"),
        ("id,text,label\n{id},,neutral,extra\n", 422, "invalid", "row 1: more cells"),
    ],
)
def test_a_bad_csv_is_refused_naming_the_row_and_changes_nothing(
    api, content, status, code, fragment
):
    _fill(api)
    item_id = _open(api)[0]["id"]
    r = api.post("/review/queues/uncertainty/import/csv", json={"csv": content.format(id=item_id)})
    _refused(r, status, code, fragment)
    assert len(_open(api)) == 5 and _gold(api.store) == {}


def test_disagreements_export_both_models_answers(api):
    _disagree(api, "job-a", ["@united one", "@united two"])
    tasks = api.get("/review/queues/disagreement/export/labelstudio?job_id=job-a").json()
    assert len(tasks) == 2
    versions = [p["model_version"] for p in tasks[0]["predictions"]]
    assert versions == ["v2 (candidate)", "v1 (champion)"]
    assert tasks[0]["meta"]["job_id"] == "job-a"
    export = _as_labelstudio_export(tasks, {0: "neutral", 1: "positive"})
    r = api.post("/review/queues/disagreement/import/labelstudio", json=export)
    assert r.json()["labeled"] == 2
    with api.store.session() as session:
        judged = reviews.labeled_disagreements(session, "job-a")
    assert [d.label for d in judged] == ["neutral", "positive"]
    assert _gold(api.store) == {}  # they wait for the gate
