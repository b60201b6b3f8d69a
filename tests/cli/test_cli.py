"""The operator commands of `pfp` against a real API: uvicorn serving the app on a loopback
port in a thread of this process (a recording job queue instead of Celery, as in
test_api), and the CLI run as a user runs it, parsing its own argv."""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uvicorn
from sqlalchemy import select

from app.api.routes import labels as labels_route
from app.cli import build_parser, main
from app.cli import data as cli_data
from app.cli.client import default_api_key, default_url
from app.core.config import Settings
from app.main import create_app
from app.store import gold, jobs, pseudo_labels, versions
from app.store.database import Store
from app.store.tables import GoldExample, PseudoLabel
from tests.conftest import ADMIN, ADMIN_KEY, LABEL_KEY, RecordingQueue, make_settings
from tests.processes import ROOT, free_port
from workers.retrain import STAGES, run_retrain_job


class LiveApi:
    """The app served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queue = RecordingQueue()
        self.app = create_app(settings, job_queue=self.queue)
        self.url = f"http://127.0.0.1:{free_port()}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=int(self.url.rsplit(":", 1)[1]), log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def store(self) -> Store:
        return self.app.state.store

    def __enter__(self) -> LiveApi:
        self.thread.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and self.thread.is_alive(), "API not ready"
            time.sleep(0.1)

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def live(
    published_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_base: Path,
    gold_file: Path,
) -> Iterator[LiveApi]:
    data = tmp_path_factory.mktemp("cli") / "data"
    shutil.copytree(published_template, data)
    with LiveApi(make_settings(data, tiny_base, gold_file)) as api:
        yield api


def pfp(capsys: pytest.CaptureFixture, live: LiveApi, *argv: str, key: str = ADMIN_KEY):
    """Run `pfp ARGV --url … --api-key …`; (exit status, stdout, stderr)."""
    capsys.readouterr()
    command = [*argv, "--url", live.url, "--api-key", key]
    try:
        main(command)
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def _all_rows(store: Store) -> list[PseudoLabel]:
    with store.session() as s:
        return pseudo_labels.list_pseudo_labels(s, limit=1_000_000)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_has_help_with_an_example():
    parser = build_parser()
    text = parser.format_help()
    for command in ("import-gold", "label", "export", "jobs", "models"):
        assert command in text
    commands = _subcommands(parser)
    leaves = {name: commands[name] for name in ("import-gold", "label", "export")}
    for group in ("jobs", "models", "retention"):
        leaves.update({f"{group} {n}": p for n, p in _subcommands(commands[group]).items()})
    assert set(leaves) >= {"jobs list", "jobs submit", "jobs watch", "jobs cancel"}
    assert set(leaves) >= {"models list", "models activate"}
    assert set(leaves) >= {"retention run", "retention list"}
    for name, leaf in leaves.items():
        help_text = leaf.format_help()
        assert "example" in help_text and "--url" in help_text and "--api-key" in help_text, name


def test_import_gold_then_the_store_counts_it(live, capsys, tmp_path):
    with live.store.session() as s:
        before = gold.split_counts(s)
    path = tmp_path / "more.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "split"])
        writer.writerow(["cli gold, with a comma", "negative", "dev"])
        writer.writerow(['cli gold "quoted"\nand a line break', "positive", "test"])
        for i in range(10):
            writer.writerow([f"cli gold plain {i}", "neutral", ""])
    status, out, _ = pfp(capsys, live, "import-gold", str(path), "--batch-size", "5")
    assert status == 0, out
    assert "12 new, 0 already stored" in out
    with live.store.session() as s:
        after = gold.split_counts(s)
        stored = set(s.scalars(select(GoldExample.text)))
    assert sum(after.values()) - sum(before.values()) == 12
    assert after["dev"] >= before.get("dev", 0) + 1 and after["test"] >= before.get("test", 0) + 1
    assert 'cli gold "quoted"\nand a line break' in stored
    # Again: everything is already there.
    status, out, _ = pfp(capsys, live, "import-gold", str(path))
    assert status == 0 and "0 new, 12 already stored" in out

    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps({"text": "cli angry", "label": "furious"}) + "\n")
    status, _, err = pfp(capsys, live, "import-gold", str(jsonl))
    assert status == 1 and "unknown labels ['furious']" in err
    status, _, err = pfp(capsys, live, "import-gold", str(tmp_path / "missing.csv"))
    assert status == 2 and "not found" in err


TEXTS = ["@united lost my bag", "naïve café, ok", 'she said "fine"', "  leading space", "✈️ 普通话"]


def test_label_three_formats_in_order_and_stored(live, capsys, tmp_path):
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(TEXTS[:3] + ["", "   "] + TEXTS[3:]) + "\n")
    as_csv = tmp_path / "in.csv"
    multiline = "two\nlines, one text"
    with as_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([[i, t] for i, t in enumerate([*TEXTS, multiline])])
    as_jsonl = tmp_path / "in.jsonl"
    as_jsonl.write_text("".join(json.dumps({"text": t, "other": 1}) + "\n" for t in TEXTS))

    status, out, err = pfp(capsys, live, "label", str(txt), "--batch-size", "2")
    assert status == 0, err
    from_txt = [json.loads(line) for line in out.splitlines()]
    assert "Labeled 5 texts" in err

    status, _, err = pfp(capsys, live, "label", str(as_csv), "-o", str(tmp_path / "out.csv"))
    assert status == 0, err
    with (tmp_path / "out.csv").open(newline="") as handle:
        from_csv = list(csv.DictReader(handle))

    out_jsonl = tmp_path / "out.jsonl"
    status, _, err = pfp(capsys, live, "label", str(as_jsonl), "-o", str(out_jsonl))
    assert status == 0, err
    from_jsonl = [json.loads(line) for line in out_jsonl.read_text().splitlines()]

    assert [r["text"] for r in from_txt] == TEXTS
    assert [r["text"] for r in from_csv] == [*TEXTS, multiline]
    assert [r["text"] for r in from_jsonl] == TEXTS
    stored = {row.id: row for row in _all_rows(live.store)}
    for record in from_txt + from_jsonl + from_csv:
        row = stored[int(record["id"])]
        assert (row.text, row.label, row.model_version) == (
            record["text"],
            record["label"],
            int(record["model_version"]),
        )
        scores = (
            record["scores"] if isinstance(record["scores"], dict) else json.loads(record["scores"])
        )
        assert float(record["confidence"]) == pytest.approx(scores[record["label"]])
    # The same text gets the same answer whichever file it came in.
    assert [r["label"] for r in from_txt] == [r["label"] for r in from_jsonl]

    bad = tmp_path / "in.csv2.csv"
    bad.write_text("body\nhello\n")
    status, _, err = pfp(capsys, live, "label", str(bad))
    assert status == 2 and "no 'text' column" in err

    # Off a terminal (capsys is not one), progress is plain lines, not a silent bar.
    status, _, err = pfp(capsys, live, "label", str(txt), "--batch-size", "1")
    assert status == 0 and "label: 100% (5/5 texts)" in err and "\r" not in err


def test_files_the_service_cannot_take_are_refused_before_anything_is_sent(live, capsys, tmp_path):
    before = len(_all_rows(live.store))
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": "bad \\ud800"}\n')
    status, _, err = pfp(capsys, live, "label", str(hostile))
    assert status == 2 and "hostile.jsonl:3" in err and "lone surrogate" in err
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 ok\n".encode("latin-1"))
    status, _, err = pfp(capsys, live, "label", str(latin))
    assert status == 2 and "not UTF-8" in err
    assert len(_all_rows(live.store)) == before  # nothing of either file was stored

    gold_file = tmp_path / "gold.jsonl"
    gold_file.write_text(
        '{"text": "good", "label": "neutral"}\n{"text": "x\\udfff", "label": "neutral"}\n'
    )
    status, _, err = pfp(capsys, live, "import-gold", str(gold_file))
    assert status == 2 and "row 2" in err and "lone surrogate" in err


@pytest.fixture(scope="module")
def export_rows(live: LiveApi) -> list[PseudoLabel]:
    """Rows with known versions, confidences and times beside whatever else is stored."""
    base = datetime(2021, 3, 1, 12, 0, tzinfo=UTC)
    with live.store.session() as s:
        rows = pseudo_labels.add_predictions(
            s,
            [
                pseudo_labels.Prediction(
                    f'export row {i}, "quoted"\nline {i}',
                    ["negative", "neutral", "positive"][i % 3],
                    0.34 + 0.05 * i,
                    [0.1 * i, -0.2, 0.3],
                    7 + i % 2,
                )
                for i in range(12)
            ],
        )
        for i, row in enumerate(rows):
            row.created_at = base + timedelta(hours=i)
    return _all_rows(live.store)


def _expected(rows: list[PseudoLabel], **f) -> list[int]:
    def utc(moment: datetime) -> datetime:
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    keep = []
    for r in rows:
        if f.get("model_version") is not None and r.model_version != f["model_version"]:
            continue
        if f.get("min_confidence") is not None and r.confidence < f["min_confidence"]:
            continue
        if f.get("max_confidence") is not None and r.confidence > f["max_confidence"]:
            continue
        if f.get("since") is not None and utc(r.created_at) < f["since"]:
            continue
        if f.get("until") is not None and utc(r.created_at) >= f["until"]:
            continue
        keep.append(r.id)
    return keep


def _flags(filters: dict) -> list[str]:
    flags = []
    for key, value in filters.items():
        text = value.isoformat() if isinstance(value, datetime) else str(value)
        flags += [f"--{key.replace('_', '-')}", text]
    return flags


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"model_version": 8},
        {"min_confidence": 0.5},
        {"min_confidence": 0.4, "max_confidence": 0.6},
        {"since": datetime(2021, 3, 1, 15, 0, tzinfo=UTC)},
        {"until": datetime(2021, 3, 1, 14, 0, tzinfo=UTC), "model_version": 7},
        {
            "since": datetime(2021, 3, 1, 16, 0, tzinfo=UTC),
            "until": datetime(2021, 3, 1, 20, 0, tzinfo=UTC),
            "min_confidence": 0.5,
        },
    ],
    ids=lambda f: "-".join(f) or "all",
)
def test_export_each_filter_and_format_matches_the_store(
    live, export_rows, capsys, tmp_path, monkeypatch, filters
):
    expected = _expected(export_rows, **filters)
    by_id = {r.id: r for r in export_rows}
    flags = _flags(filters)
    # Small pages and row groups, so that streaming across several of them is what is tested.
    monkeypatch.setattr(labels_route, "EXPORT_PAGE", 5)
    monkeypatch.setattr(cli_data, "PARQUET_ROW_GROUP", 4)

    status, out, err = pfp(capsys, live, "export", *flags)
    assert status == 0, err
    items = [json.loads(line) for line in out.splitlines()]
    assert [i["id"] for i in items] == expected
    for item in items:
        row = by_id[item["id"]]
        assert (item["text"], item["label"], item["model_version"]) == (
            row.text,
            row.label,
            row.model_version,
        )
        assert item["confidence"] == pytest.approx(row.confidence)
        assert item["logits"] == pytest.approx(row.logits)
        assert item["created_at"].endswith("Z")
    assert f"Exported {len(expected)} pseudo-labels" in err

    status, _, err = pfp(capsys, live, "export", *flags, "-o", str(tmp_path / "out.csv"))
    assert status == 0, err
    cli_csv = (tmp_path / "out.csv").read_bytes()
    with (tmp_path / "out.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["id"]) for r in rows] == expected
    assert [r["text"] for r in rows] == [by_id[i].text for i in expected]
    assert [json.loads(r["logits"]) for r in rows] == [by_id[i].logits for i in expected]
    # The API's own CSV is the same file, byte for byte.
    params = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in filters.items()}
    api_csv = httpx.get(
        f"{live.url}/labels/export", params={**params, "format": "csv"}, headers=ADMIN
    )
    assert api_csv.content == cli_csv

    target = tmp_path / "out.parquet"
    status, _, err = pfp(capsys, live, "export", *flags, "-o", str(target))
    assert status == 0, err
    assert not (tmp_path / "out.parquet.partial").exists()
    parquet = pq.ParquetFile(target)
    assert parquet.metadata.num_rows == len(expected)
    assert parquet.metadata.num_row_groups == -(-len(expected) // 4)
    table = parquet.read()
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert table.column("id").to_pylist() == expected
    assert table.column("text").to_pylist() == [by_id[i].text for i in expected]
    assert table.column("logits").to_pylist() == [by_id[i].logits for i in expected]
    created = table.column("created_at").to_pylist()
    for moment, row_id in zip(created, expected, strict=True):
        stored = by_id[row_id].created_at
        assert moment == (stored if stored.tzinfo else stored.replace(tzinfo=UTC))


def test_export_times_with_an_offset_and_empty_results(live, export_rows, capsys, tmp_path):
    # 16:00+02:00 is 14:00 UTC: rows 2, 3 and 4 of the fixture, hours 14, 15 and 16 … until 17.
    status, out, _ = pfp(
        capsys,
        live,
        "export",
        "--since",
        "2021-03-01T16:00:00+02:00",
        "--until",
        "2021-03-01T17:00:00Z",
    )
    assert status == 0
    want = _expected(
        export_rows,
        since=datetime(2021, 3, 1, 14, 0, tzinfo=UTC),
        until=datetime(2021, 3, 1, 17, 0, tzinfo=UTC),
    )
    assert len(want) == 3 and [json.loads(x)["id"] for x in out.splitlines()] == want
    # Nothing matches: an empty JSONL, a CSV with its header, a Parquet file with no rows.
    none = ["--model-version", "999"]
    status, out, _ = pfp(capsys, live, "export", *none)
    assert status == 0 and out == ""
    status, out, _ = pfp(capsys, live, "export", *none, "--format", "csv")
    assert out.strip() == "id,text,label,confidence,model_version,created_at,logits"
    status, _, _ = pfp(capsys, live, "export", *none, "-o", str(tmp_path / "none.parquet"))
    assert status == 0 and pq.read_table(tmp_path / "none.parquet").num_rows == 0


def test_export_api_streams_csv_and_refuses_bad_filters(
    live, export_rows, monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(labels_route, "EXPORT_PAGE", 3)
    url = f"{live.url}/labels/export"
    r = httpx.get(url, params={"format": "csv", "model_version": 7}, headers=ADMIN)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="pseudo_labels.csv"' in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["id", "text", "label", "confidence", "model_version", "created_at", "logits"]
    assert [int(x[0]) for x in rows[1:]] == _expected(export_rows, model_version=7)
    assert sum(1 for x in rows if x[0] == "id") == 1  # the header once, over several pages
    r = httpx.get(url, params={"model_version": 7}, headers=ADMIN)
    assert r.headers["content-type"] == "application/x-ndjson"

    for params, fragment in [
        ({"since": "2021-03-02T00:00:00", "until": "2021-03-01T00:00:00"}, "must be before"),
        ({"since": "2021-03-01T00:00:00Z", "until": "2021-03-01T00:00:00Z"}, "must be before"),
        ({"min_confidence": 0.9, "max_confidence": 0.1}, "above max_confidence"),
        ({"min_confidence": 1.5}, "less than or equal to 1"),
        ({"max_confidence": -0.1}, "greater than or equal to 0"),
        ({"since": "yesterday"}, "datetime"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since is out of range"),
        ({"format": "xml"}, "jsonl"),
    ]:
        for path in ("/labels/export", "/labels"):
            if path == "/labels" and "format" in params:
                continue
            r = httpx.get(f"{live.url}{path}", params=params, headers=ADMIN)
            assert r.status_code == 422, (path, params, r.text)
            assert fragment in r.text, (path, params, r.text)
    # The CLI passes the API's word on.
    status, out, err = pfp(
        capsys, live, "export", "--since", "2021-03-02", "--until", "2021-03-01", "--format", "csv"
    )
    assert status == 1 and "422: since (2021-03-02T00:00:00+00:00) must be before until" in err
    assert out == ""  # not even the header row
    target = tmp_path / "refused.parquet"
    status, _, _ = pfp(capsys, live, "export", "--min-confidence", "2", "-o", str(target))
    assert status == 1 and list(tmp_path.iterdir()) == []


def test_jobs_and_models(live, capsys):
    httpx.post(
        f"{live.url}/label/batch",
        json={"texts": [f"@united bag lost {i}" for i in range(24)]},
        headers=ADMIN,
    ).raise_for_status()

    status, out, _ = pfp(capsys, live, "jobs", "submit", "--param", "pretrain_max_steps=1")
    assert status == 0
    first = out.split("Queued job ")[1].split(".")[0]
    assert live.queue.sent[-1] == ("pfp.retrain", [first])
    status, out, _ = pfp(capsys, live, "jobs", "list")
    assert status == 0 and first in out and "queued" in out
    created = out.splitlines()[1].split()[5]
    assert created.endswith("Z") and "T" in created  # ISO 8601 in UTC, as the API gives
    status, out, _ = pfp(capsys, live, "jobs", "cancel", first)
    assert status == 0 and f"Job {first} cancelled." in out
    status, out, _ = pfp(capsys, live, "jobs", "watch", first)
    assert status == 1 and "cancelled" in out
    status, _, err = pfp(capsys, live, "jobs", "cancel", first)
    assert status == 1 and "already cancelled" in err

    status, _, err = pfp(capsys, live, "jobs", "submit", "--param", "learning_rate=1")
    assert status == 1 and "learning_rate" in err
    status, _, err = pfp(capsys, live, "jobs", "watch", "no-such-job")
    assert status == 1 and "no job with id 'no-such-job'" in err

    # A job that fails: watch says so and exits non-zero.
    status, out, _ = pfp(capsys, live, "jobs", "submit")
    failing = out.split("Queued job ")[1].split(".")[0]
    with live.store.session() as s:
        job = jobs.get_job(s, failing)
        job.status, job.stage, job.progress = "running", "pretrain", 0.4
    threading.Timer(1.0, _fail, args=(live.store, failing)).start()
    status, out, _ = pfp(capsys, live, "jobs", "watch", failing, "--interval", "0.2")
    assert status == 1 and "failed" in out and "Error: out of memory" in out

    # A job that the "worker" runs while the CLI watches it: exit 0, v2 published.
    small = ["pretrain_max_steps=2", "finetune_max_steps=2", "promotion_margin=-1", "batch_size=8"]
    small.append("finetune.patience=1")  # a dotted name beside the flat ones
    status, out, _ = pfp(
        capsys, live, "jobs", "submit", *[x for p in small for x in ("--param", p)]
    )
    job_id = out.split("Queued job ")[1].split(".")[0]
    with live.store.session() as s:
        # Flat names on the command line; stored as declared, by section.
        stored = jobs.get_job(s, job_id).params  # type: ignore[union-attr]
        assert stored["promotion"]["margin"] == -1 and stored["batch_size"] == 8
        assert stored["finetune"] == {**stored["finetune"], "max_steps": 2, "patience": 1}
    worker = threading.Thread(target=run_retrain_job, args=(job_id, live.settings, live.store))
    worker.start()
    status, out, err = pfp(capsys, live, "jobs", "watch", job_id, "--interval", "0.2")
    worker.join()
    assert status == 0 and f"Job {job_id} succeeded." in out and "Decision:" in out
    # Off a terminal, a line per stage change rather than nothing until the end.
    lines = err.splitlines()
    seen = [line.split(":")[0] for line in lines]
    # The first poll may land in the short "preparing" stage or just after it.
    assert "pretraining" in seen and set(seen) <= {name for name, _ in STAGES}
    assert seen == sorted(seen, key=[name for name, _ in STAGES].index)
    assert lines[-1].startswith("publishing: 100%")
    assert "succeeded" in lines[-1] and "\r" not in err

    status, out, _ = pfp(capsys, live, "models", "list")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "STATE", "DECISION"]
    assert lines[1].startswith("* v2") and lines[2].startswith("  v1")
    status, out, _ = pfp(capsys, live, "models", "list", "--json")
    assert [m["version"] for m in json.loads(out)] == [2, 1]

    status, out, _ = pfp(capsys, live, "models", "activate", "1")
    assert status == 0 and "v1 is active" in out
    with live.store.session() as s:
        assert versions.active_version(s) == 1
    status, _, err = pfp(capsys, live, "models", "activate", "99")
    assert status == 1 and "no model version 99" in err


def _fail(store: Store, job_id: str) -> None:
    with store.session() as s:
        job = jobs.get_job(s, job_id)
        assert job is not None
        jobs.finish(job, "failed", "out of memory")


def test_wrong_keys_are_reported_without_a_traceback(live, capsys):
    status, _, err = pfp(capsys, live, "jobs", "list", key="not-a-key")
    assert status == 1
    assert "401: invalid API key" in err and "PFP_API_KEY" in err
    status, _, err = pfp(capsys, live, "models", "activate", "1", key=LABEL_KEY)
    assert status == 1 and "403: this API key may label texts but not use admin" in err


def test_api_down_says_where_and_how_to_start_it():
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "jobs", "list", "--url", url, "--api-key", "k"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert f"could not reach the service at {url}" in done.stderr
    assert "pfp serve" in done.stderr and "PFP_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_url_and_key_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("PFP_URL", raising=False)
    monkeypatch.delenv("PFP_API_KEY", raising=False)
    settings = Settings(data_dir=tmp_path, port=8123, admin_api_keys="", host="0.0.0.0")
    assert default_url(settings) == "http://127.0.0.1:8123"
    assert default_api_key(settings) is None  # no key file, and the client never makes one
    assert not (tmp_path / "admin_api_key").exists()
    (tmp_path / "admin_api_key").write_text("generated-key\n")
    assert default_api_key(settings) == "generated-key"
    configured = Settings(data_dir=tmp_path, admin_api_keys=" first , second")
    assert default_api_key(configured) == "first"
    monkeypatch.setenv("PFP_API_KEY", "from-env")
    monkeypatch.setenv("PFP_URL", "https://pfp.example:9000")
    assert default_api_key(configured) == "from-env"
    assert default_url(configured) == "https://pfp.example:9000"
