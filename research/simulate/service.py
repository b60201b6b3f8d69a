"""The service of one arm and seed, in this process: a real store and model folders under
their own DATA_DIR, the FastAPI app behind a TestClient (the labeling path, the review
queues, `POST /jobs` and `POST /gold` as users reach them), and the Celery tasks it asks
for run here, by the plain functions the worker's tasks call (workers/tasks.py).

The first model is made once per seed (`make_template`: gold imported, `bootstrap` as
`make serve` runs it) and each arm starts from a copy of that folder."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.ml.job_params import JobParams
from app.ml.method import student
from app.ml.pool import PoolPolicy
from app.ml.training import LossHistory, ProgressFn, finetune_steps, pretrain_steps
from app.store import gold, pseudo_labels
from app.store.database import Store
from research.simulate.data import SeedData
from workers.bootstrap import bootstrap_first_model
from workers.gate import judge_pending
from workers.pipeline import current_champion, gather_pool, load_gold
from workers.retrain import run_retrain_job
from workers.review_traffic import score_new_traffic
from workers.teacher import student_params

ADMIN_KEY = "simulate-admin-key"
# The most texts one /label/batch request may carry (the MAX_BATCH_TEXTS setting's default).
BATCH = 256
SWAP_TIMEOUT_SECONDS = 300.0


def service_settings(data_dir: Path, base: Path, teacher: Path | None, **values: Any) -> Settings:
    """The service's settings for a simulation: embedded (SQLite, no Redis), PyTorch
    serving without a measured micro-batch (the served form does not change what the
    model answers here), training that never pauses for serving (they take turns)."""
    given: dict[str, Any] = {
        "data_dir": data_dir,
        "base_model": str(base),
        "teacher_model": str(teacher) if teacher else "",
        "database_url": "",
        "redis_url": "",
        "admin_api_keys": ADMIN_KEY,
        "label_api_keys": "",
        "log_level": "warning",
        "infer_backend": "torch",
        "infer_bf16": "never",
        "infer_tune_seconds": 0.0,
        "infer_max_batch": 64,
        "infer_max_wait_ms": 1.0,
        "swap_poll_seconds": 0.2,
        "worker_min_share": 1.0,
        "api_processes": 1,
        # The API's model server sets torch's threads for this whole process.
        "torch_threads": torch.get_num_threads(),
    }
    given.update(values)
    return Settings(**given)


def make_template(settings: Settings, seed_data: SeedData, test: Sequence[tuple[str, str]]) -> int:
    """A data folder with the seed's first labels and the fixed test split as gold, and the
    first model published; returns its version."""
    store = Store(settings.store_url)
    try:
        items = [gold.GoldItem(t, label, split) for t, label, split in seed_data.initial]
        items += [gold.GoldItem(t, label, "test") for t, label in test]
        with store.session() as session:
            gold.import_gold(session, items, source="simulate:initial")
        version = bootstrap_first_model(settings, store)
    finally:
        store.dispose()
    if version is None:
        raise RuntimeError(f"no first model was published in {settings.data_dir}")
    return version


@contextlib.contextmanager
def no_pretraining() -> Iterator[None]:
    """A job whose pre-training stage trains nothing: its student is the start encoder
    with a fresh head, which the job then fine-tunes on gold (for as many steps as
    pre-training and fine-tuning would have taken: `matched_finetune_steps`). Every other
    stage is the job's own: pool, evaluation, shadow scoring, the gate, publishing."""

    def untrained(
        start: Path,
        labels: list[str],
        texts: Sequence[str],
        _logits: Sequence[Sequence[float]],
        params: JobParams,
        progress: ProgressFn,
    ) -> tuple[Any, Any, LossHistory]:
        model, tokenizer = student(start, labels, params)
        history = LossHistory(notes={"pool": {"given": len(texts), "used": 0}})
        progress(1.0, 0.0)
        return model, tokenizer, history

    with mock.patch("workers.retrain.pretrain_on_predictions", untrained):
        yield


class TaskQueue:
    """Stands in for Celery: records what the API asks for; `run()` then does it here."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []

    def send_task(self, name: str, args: list[Any], **_options: Any) -> None:
        self.sent.append((name, list(args)))


class Service:
    """One arm's service over one seed. Use as a context manager."""

    def __init__(self, settings: Settings, gold_only: bool, match_taught: bool = False) -> None:
        """`gold_only`: jobs pre-train nothing and fine-tune for the steps a job would take
        in all; `match_taught`: those of a job a stronger teacher teaches."""
        from app.main import create_app

        self.settings = settings
        self.gold_only = gold_only
        self.match_taught = match_taught
        self.queue = TaskQueue()
        # A second connection to the store, as a worker process holds.
        self.worker_store = Store(settings.store_url)
        self.client = TestClient(
            create_app(settings, job_queue=self.queue), headers={"X-API-Key": ADMIN_KEY}
        )

    def __enter__(self) -> Service:
        self.client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)
        self.worker_store.dispose()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    # --- the labeling path ---------------------------------------------------------------

    def label(self, texts: Sequence[str]) -> int:
        """Send texts through `/label/batch`, as users' traffic; returns how many stored."""
        stored = 0
        for start in range(0, len(texts), BATCH):
            body = {"texts": list(texts[start : start + BATCH])}
            stored += len(self.call("POST", "/label/batch", json=body)["results"])
        return stored

    # --- jobs and the worker's tasks ----------------------------------------------------

    def submit_job(self, params: JobParams) -> str:
        body = params.model_dump()
        if self.gold_only:
            body = params.updated(
                {"finetune.max_steps": self.matched_finetune_steps(params)}
            ).model_dump()
        job_id: str = self.call("POST", "/jobs", json=body)["id"]
        return job_id

    def matched_finetune_steps(self, params: JobParams) -> int:
        """The steps a job with `params` would take in all, pre-training on the pool it
        would gather now and fine-tuning on gold train: what a gold-only job is given.
        Matched to a taught job, its pre-training takes the passes a stronger teacher's
        student takes (its pool is gathered as any job's: workers/retrain.py)."""
        store = self.worker_store
        champion = current_champion(store)
        assert champion is not None
        with store.session() as session:
            upto = pseudo_labels.max_id(session)
        pool = gather_pool(store, champion.labels, upto, PoolPolicy.for_job(params))
        train = len(load_gold(store).train[0])
        pretraining = student_params(params) if self.match_taught else params
        return pretrain_steps(pretraining, len(pool.texts)) + finetune_steps(params, train)

    def run_tasks(self) -> None:
        """Run what the API asked the workers for, in order, as a worker would."""
        tasks: dict[str, Callable[..., object]] = {
            "pfp.retrain": self._retrain,
            "pfp.judge_pending": self.look_again,
            "pfp.review_traffic": lambda job_id: score_new_traffic(
                job_id, self.settings, self.worker_store
            ),
        }
        while self.queue.sent:
            name, args = self.queue.sent.pop(0)
            tasks[name](*args)

    def look_again(self, job_id: str | None = None) -> None:
        """What beat does every minute: look again at waiting candidates, and ask for new
        traffic to be scored for one whose queue is labeled out; then run what it asked."""
        judge_pending(
            self.settings,
            self.worker_store,
            job_id,
            score_traffic=lambda one: self.queue.send_task("pfp.review_traffic", [one]),
        )

    def _retrain(self, job_id: str) -> None:
        with no_pretraining() if self.gold_only else contextlib.nullcontext():
            run_retrain_job(job_id, self.settings, self.worker_store)

    def decide_at(self, job_id: str, now: datetime) -> None:
        """Look at a waiting candidate as beat would at `now` (its deadline: decided on
        what there is)."""
        judge_pending(self.settings, self.worker_store, job_id, now=now)

    def gold_texts(self) -> set[str]:
        with self.worker_store.session() as session:
            return gold.all_texts(session, gold.SPLITS)

    def job(self, job_id: str) -> dict[str, Any]:
        view: dict[str, Any] = self.call("GET", f"/jobs/{job_id}")
        return view

    def wait_for_swap(self) -> dict[str, Any]:
        """`/models/active` once this API process serves the store's active version."""
        deadline = time.monotonic() + SWAP_TIMEOUT_SECONDS
        while True:
            active: dict[str, Any] = self.call("GET", "/models/active")
            if active["version"] == active["served_version"]:
                return active
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the API still serves v{active['served_version']}, not the active "
                    f"v{active['version']}, after {SWAP_TIMEOUT_SECONDS:.0f} s"
                )
            time.sleep(0.1)


def copy_template(template: Path, data_dir: Path) -> None:
    """A fresh copy of the seed's data folder for one arm (its store and model folders)."""
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.copytree(template, data_dir)
