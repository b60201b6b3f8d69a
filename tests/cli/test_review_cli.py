"""`pfp review`: one text at a time from stdin (not a terminal: a line per answer), the
uncertainty fill, and the Label Studio and CSV files out and back in, against a real API
in a thread."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.cli.review_terminal import class_keys, key_legend
from app.core.config import Settings
from app.store import reviews
from app.store.reviews import Disagreement
from tests.cli.test_cli import LiveApi, pfp
from tests.conftest import ADMIN, LABELS, make_settings

TEXTS = [f"@united gate {i} changed, is boarding still at {i}pm" for i in range(5)]


@pytest.fixture
def live(published_copy: Settings, tiny_base: Path, gold_file: Path) -> Iterator[LiveApi]:
    with LiveApi(make_settings(published_copy.data_dir, tiny_base, gold_file)) as api:
        httpx.post(
            f"{api.url}/label/batch", json={"texts": TEXTS}, headers=ADMIN
        ).raise_for_status()
        yield api


def _typed(monkeypatch: pytest.MonkeyPatch, *lines: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{line}\n" for line in lines)))


def _items(live: LiveApi, queue: str = "uncertainty", status: str | None = None) -> list:
    with live.store.session() as session:
        return reviews.list_items(session, queue, status=status, limit=100)


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)


def test_keys_are_numbers_and_unambiguous_first_letters():
    keys = class_keys(LABELS)  # negative and neutral share their first letter
    assert keys == {"1": "negative", "2": "neutral", "3": "positive", "p": "positive"}
    assert key_legend(LABELS, keys).startswith("[1] negative  [2] neutral  [3/p] positive")
    # s and q stay skip and quit.
    assert class_keys(["spam", "ham", "question"]) == {
        "1": "spam",
        "2": "ham",
        "3": "question",
        "h": "ham",
    }


def test_answering_the_uncertainty_queue_one_text_at_a_time(live, capsys, monkeypatch):
    status, out, _ = pfp(capsys, live, "review", "fill", "--size", "5")
    assert status == 0 and "Added 5 texts to the uncertainty queue" in out and "5 open" in out
    order = [i.text for i in _items(live, status="open")]

    _typed(monkeypatch, "2", "zz", "s", "negative", "P", "q")
    status, out, _ = pfp(capsys, live, "review", "--annotator", "ana")
    assert status == 0, out
    assert "uncertainty · item" in out and "0 labeled, 5 open" in out
    assert order[0] in out and "v1 said" in out and "(margin " in out
    assert "[1] negative  [2] neutral  [3/p] positive  [s] skip  [q] quit" in out
    assert "'zz' is not a key" in out
    assert "> neutral\n" in out and "> s\n  skipped" in out and "> negative\n" in out
    assert "1 labeled, 3 open" in out  # the progress line of the third text
    assert "This session: 3 labeled, 1 skipped. The uncertainty queue: 3 labeled, 1 open." in out

    by_text = {i.text: i for i in _items(live, status=None)}
    answered = [(by_text[t].status, by_text[t].label) for t in order]
    assert answered == [
        ("labeled", "neutral"),
        ("skipped", None),
        ("labeled", "negative"),
        ("labeled", "positive"),
        ("open", None),
    ]
    assert {by_text[order[0]].labeled_via, by_text[order[0]].annotator} == {"cli", "ana"}


def test_the_session_ends_when_the_queue_is_empty_or_the_input_ends(live, capsys, monkeypatch):
    pfp(capsys, live, "review", "fill", "--size", "2")
    _typed(monkeypatch, "1")  # then end of input: a quit
    status, out, _ = pfp(capsys, live, "review")
    assert status == 0 and "This session: 1 labeled, 0 skipped" in out
    _typed(monkeypatch, "1", "1", "1")
    status, out, _ = pfp(capsys, live, "review")
    assert status == 0 and "Nothing open in the uncertainty queue." in out
    assert "This session: 1 labeled" in out


def test_a_disagreement_shows_both_models_answers(live, capsys, monkeypatch):
    with live.store.session() as session:
        reviews.add_disagreements(
            session, "job-a", 2, 1, [Disagreement("@united two answers", "positive", "negative")]
        )
    _typed(monkeypatch, "n")  # ambiguous here (negative, neutral): not a key
    status, out, _ = pfp(capsys, live, "review", "--queue", "disagreement", "--job", "job-a")
    assert status == 0
    assert "candidate v2 said positive · champion v1 said negative" in out
    assert "'n' is not a key" in out
    with live.store.session() as session:
        assert reviews.labeled_disagreements(session, "job-a") == []


def test_labelstudio_and_csv_files_out_and_back(live, capsys, tmp_path):
    pfp(capsys, live, "review", "fill", "--size", "5")
    tasks_file = tmp_path / "tasks.json"
    status, _, err = pfp(capsys, live, "review", "export", "-o", str(tasks_file))
    assert status == 0 and "Wrote 5 tasks" in err and "pfp review config" in err
    tasks = json.loads(tasks_file.read_text())
    assert [t["data"]["text"] for t in tasks] == [i.text for i in _items(live, status="open")]

    status, out, _ = pfp(capsys, live, "review", "config")
    assert status == 0 and out.startswith("<View>") and '<Choice value="neutral"/>' in out

    # Label Studio hands back the tasks with annotations and its own fields.
    for n, task in enumerate(tasks[:2]):
        task.update(id=40 + n, inner_id=n + 1, project=3, drafts=[], file_upload="x.json")
        task["annotations"] = [
            {
                "id": 7 + n,
                "completed_by": 1,
                "result": [
                    {
                        "value": {"choices": [LABELS[n]]},
                        "id": "r",
                        "from_name": "label",
                        "to_name": "text",
                        "type": "choices",
                        "origin": "manual",
                    }
                ],
                "was_cancelled": False,
                "lead_time": 3.1,
                "created_at": "2026-12-01T09:00:00.000000Z",
                "updated_at": "2026-12-01T09:00:00.000000Z",
            }
        ]
    export = tmp_path / "project-3-at-2026-12-01.json"
    export.write_text(json.dumps(tasks))
    status, out, _ = pfp(capsys, live, "review", "import", str(export))
    assert status == 0, out
    assert "2 labeled, 0 skipped, 0 already so, 3 without an answer" in out

    sheet = tmp_path / "review.csv"
    status, _, err = pfp(capsys, live, "review", "export", "-o", str(sheet))
    assert status == 0 and "Wrote 3 rows" in err
    rows = list(csv.DictReader(sheet.open()))
    rows[0]["label"] = "positive"
    _write_rows(sheet, rows)
    status, out, _ = pfp(capsys, live, "review", "import", str(sheet))
    assert status == 0 and "1 labeled" in out
    assert len(_items(live, status="labeled")) == 3

    # A bad file: the API's reason, naming the row, and exit status 1; nothing changes.
    rows[1]["label"] = "sarcastic"
    _write_rows(sheet, rows)
    status, _, err = pfp(capsys, live, "review", "import", str(sheet))
    assert status == 1 and "row 2: unknown class 'sarcastic'" in err
    assert len(_items(live, status="labeled")) == 3
    # Not JSON at all: refused before anything is sent (exit 2).
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    status, _, err = pfp(capsys, live, "review", "import", str(broken))
    assert status == 2 and "not JSON" in err
