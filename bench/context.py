"""The state the parts of `python -m bench` share: the service's processes, its settings,
its store, the demo data, and how long and how hard each load runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from app.core.config import Settings
from app.registry import version_dir
from app.store.database import Store
from app.store.gold_files import demo_gold
from bench.forms import log
from bench.load import LoadResult, run_load
from bench.service import HEADERS, KEY, Service
from bench.tiny import build_tiny_bert


class Bench:
    """The state the parts share: the service's processes, its settings and the data."""

    def __init__(self, quick: bool, out: Path) -> None:
        self.quick = quick
        self.out = out
        self.seconds = 1.0 if quick else 6.0
        self.conc = 8 if quick else 32
        self.base = build_tiny_bert(out / "tiny-base") if quick else None
        env_values: dict[str, Any] = {
            "DATA_DIR": out / "data",
            "ADMIN_API_KEYS": KEY,
            # The full run serves the first model a user gets (one epoch on the demo data):
            # what int8 costs in quality is only meaningful on a fully trained model.
            "BOOTSTRAP_MAX_STEPS": 10 if quick else 0,
            "MAX_LENGTH": 64,
            "SWAP_POLL_SECONDS": 1,
            "HF_HUB_OFFLINE": 1,
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": 1,
        }
        if quick:
            # A tiny model and 600 demo tweets: the smoke test checks that every part runs.
            env_values["BASE_MODEL"] = self.base
            gold_path = out / "gold.jsonl"
            with gold_path.open("w") as handle:
                for item in demo_gold(13)[:600]:
                    handle.write(json.dumps({"text": item.text, "label": item.label}) + "\n")
            env_values["BOOTSTRAP_GOLD"] = gold_path
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
            **{k: str(v) for k, v in env_values.items()},
        }
        self.settings = Settings.model_validate(
            {k.lower(): v for k, v in self.env.items() if k.lower() in Settings.model_fields}
        )
        self.gold = demo_gold(13)
        self.texts = [g.text for g in self.gold if g.split == "train"]
        self.service = Service(self.env, out)
        self.store: Store | None = None
        self.url: str | None = None

    def bootstrap(self, reuse: bool = False) -> None:
        self.store = Store(self.settings.store_url)
        if reuse and (version_dir(self.settings, 1) / "config.json").is_file():
            log("serving the model of the previous run (--reuse-model)")
            return
        self.store.dispose()
        log("bootstrapping a model to serve (a short fine-tune)")
        boot = self.service.start("bootstrap", "bootstrap")
        if boot.wait(1200) != 0:
            raise RuntimeError(f"bootstrap failed; see {self.out}/bootstrap.log")
        self.store = Store(self.settings.store_url)

    def api(self) -> str:
        if self.url is None:
            self.url = self.service.api()
            run_load([self.url], "/label", self.texts, 8, 1.0, headers=HEADERS)  # warm-up
        return self.url

    def load(
        self, path: str, concurrency: int, batch: int = 0, url: str | None = None, **kw: Any
    ) -> LoadResult:
        """`path` under load from the bench's API (or `url`) for the usual time."""
        urls = [url or self.api()]
        return run_load(urls, path, self.texts, concurrency, self.seconds, batch, HEADERS, **kw)

    def active_model(self) -> dict[str, Any]:
        """What the bench's API says it serves (/models/active): the form, why, the bounds."""
        active: dict[str, Any] = httpx.get(f"{self.api()}/models/active", headers=HEADERS).json()
        return active
