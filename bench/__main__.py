"""`python -m bench [--quick]`: measure the service against its baselines in one run.

1. ceiling: the bare batched forward pass, in-process, per batch size (fp32 and int8);
2. naive: a transformers pipeline behind FastAPI, one request at a time;
3. ours: `/label` and `/label/batch` at several concurrencies, from a separate client;
4. swap under load: a model published while two API processes serve;
5. serving while a training job runs on the same machine;
6. training: our joint step against a naive one on the same batches.

The service is started as a user would (`pfp api`, `pfp worker`), on loopback. Results go
to bench-results/bench.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from app.core.config import Settings
from app.ml.data import demo_gold
from app.ml.modeling import Classifier, load_classifier
from app.registry import activate_if_champion, notify_swap, version_dir, write_version
from app.store import registry as versions
from app.store.database import Store
from bench.load import LoadResult, run_load
from bench.tiny import build_tiny_bert

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-admin-key"
HEADERS = {"X-API-Key": KEY}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """Processes started with `python -m app.cli ...` over one data folder."""

    def __init__(self, env: dict[str, str], out: Path) -> None:
        self.env = env
        self.out = out
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        handle = (self.out / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def api(self) -> str:
        port = free_port()
        proc = self.start(f"api-{port}", "api", "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"api exited; see {self.out}/api-{port}.log")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("api not ready")

    def stop_one(self, proc: subprocess.Popen[bytes]) -> None:
        """Warm shutdown through the main process (Celery stops its own pool); SIGKILL to
        the whole group if that takes too long."""
        import signal

        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        import signal

        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def measure_ceiling(
    classifier: Classifier, texts: list[str], batch_sizes: list[int], seconds: float
) -> dict[int, dict[str, float]]:
    """Texts/s of tokenize + forward, in-process, per batch size."""
    out: dict[int, dict[str, float]] = {}
    for size in batch_sizes:
        classifier.logits(texts[:size])  # warm-up
        done, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            chunk = [texts[(i + k) % len(texts)] for k in range(size)]
            classifier.logits(chunk)
            done += size
            i += size
        elapsed = time.perf_counter() - start
        out[size] = {
            "texts_per_s": round(done / elapsed, 1),
            "ms_per_batch": round(1000 * elapsed * size / done, 2),
        }
    return out


def quantized(classifier: Classifier) -> Classifier:
    model = torch.ao.quantization.quantize_dynamic(
        classifier.model, {torch.nn.Linear}, dtype=torch.qint8
    )
    return Classifier(model, classifier.tokenizer, classifier.labels, classifier.max_length)


def publish_copy(settings: Settings, store: Store) -> int:
    """Publish a copy of the active model as a new version (what a winning job does)."""
    with store.session() as session:
        active = versions.active_version(session)
        assert active is not None
        labels = list(versions.get_version(session, active).labels)  # type: ignore[union-attr]
    source = version_dir(settings, active)
    version = write_version(
        settings,
        store,
        lambda folder: shutil.copytree(source, folder, dirs_exist_ok=True),
        labels=labels,
        parent_version=active,
        job_id=None,
        metrics={},
        lineage={"kind": "bench-copy"},
        decision="published",
    )
    activate_if_champion(store, version, active, "bench: swap under load")
    notify_swap(settings, version)
    return version


def measure_training(
    base: Path, texts: list[str], steps: int, batch: int, max_length: int
) -> dict[str, Any]:
    """Tokens/s of our joint step against a naive one (full-vocabulary MLM logits from a
    separate masked-LM forward, plus a separate classification forward) on the same batches."""
    import torch.nn.functional as F
    from transformers import AutoModelForMaskedLM

    from app.ml.joint import JointModel, mask_tokens
    from app.ml.modeling import init_classifier
    from app.ml.training import cpu_has_fast_bf16

    labels = ["negative", "neutral", "positive"]
    model, tokenizer = init_classifier(base, labels)
    joint = JointModel.from_classifier(model, base).train()
    naive_mlm = AutoModelForMaskedLM.from_pretrained(str(base)).train()
    naive_clf, _ = init_classifier(base, labels)
    naive_clf.train()
    gen = torch.Generator().manual_seed(0)
    batches = []
    for i in range(steps):
        chunk = [texts[(i * batch + k) % len(texts)] for k in range(batch)]
        enc = tokenizer(
            chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        special = torch.tensor(
            [
                tokenizer.get_special_tokens_mask(r, already_has_special_tokens=True)
                for r in enc["input_ids"].tolist()
            ]
        ).bool() | (enc["attention_mask"] == 0)
        masked, mlm_labels = mask_tokens(enc["input_ids"], special, tokenizer, 0.15, gen)
        hard = torch.randint(0, 3, (batch,), generator=gen)
        batches.append(
            (masked, enc["attention_mask"], mlm_labels, hard, int(enc["attention_mask"].sum()))
        )

    def ours(b: tuple) -> None:
        masked, attn, mlm_labels, hard, _ = b
        joint(masked, attn, mlm_labels, hard_labels=hard).loss.backward()
        joint.zero_grad(set_to_none=True)

    def ours_bf16(b: tuple) -> None:
        # The same step under bf16 autocast, as jobs run it where the CPU has native bf16.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = joint(b[0], b[1], b[2], hard_labels=b[3]).loss
        loss.backward()
        joint.zero_grad(set_to_none=True)

    def naive(b: tuple) -> None:
        masked, attn, mlm_labels, hard, _ = b
        mlm_loss = naive_mlm(input_ids=masked, attention_mask=attn, labels=mlm_labels).loss
        task = F.cross_entropy(naive_clf(input_ids=masked, attention_mask=attn).logits, hard)
        (mlm_loss + task).backward()
        naive_mlm.zero_grad(set_to_none=True)
        naive_clf.zero_grad(set_to_none=True)

    result: dict[str, Any] = {}
    tokens = sum(b[4] for b in batches)
    steps_to_time = [("naive", naive), ("ours", ours)]
    if cpu_has_fast_bf16():
        steps_to_time.append(("ours_bf16", ours_bf16))
    for name, step in steps_to_time:
        step(batches[0])  # warm-up
        start = time.perf_counter()
        for b in batches:
            step(b)
        elapsed = time.perf_counter() - start
        result[name] = {
            "tokens_per_s": round(tokens / elapsed, 1),
            "s_per_step": round(elapsed / steps, 3),
        }
    result["speedup"] = round(result["ours"]["tokens_per_s"] / result["naive"]["tokens_per_s"], 2)
    if "ours_bf16" in result:
        result["speedup_bf16"] = round(
            result["ours_bf16"]["tokens_per_s"] / result["naive"]["tokens_per_s"], 2
        )
    result["batch"] = batch
    result["steps"] = steps
    return result


def latency_summary(load: LoadResult, since: float = 0.0, until: float = 1e9) -> float:
    window = [
        lat
        for (t, _, _), lat in zip(load.versions, load.latencies, strict=True)
        if since <= t <= until
    ]
    if not window:
        return float("nan")
    window.sort()
    return round(window[min(len(window) - 1, int(0.99 * len(window)))] * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model and short runs (a smoke test)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    quick = args.quick
    seconds = 1.0 if quick else 6.0
    out: Path = args.out
    shutil.rmtree(out / "data", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    base = build_tiny_bert(out / "tiny-base") if quick else None
    env_values: dict[str, Any] = {
        "DATA_DIR": out / "data",
        "ADMIN_API_KEYS": KEY,
        "BOOTSTRAP_MAX_STEPS": 10 if quick else 60,
        "MAX_LENGTH": 64,
        "SWAP_POLL_SECONDS": 1,
        "HF_HUB_OFFLINE": 1,
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": 1,
    }
    if quick:
        # A tiny model and 600 demo tweets: the smoke test checks that every part runs.
        env_values["BASE_MODEL"] = base
        gold_path = out / "gold.jsonl"
        with gold_path.open("w") as handle:
            for item in demo_gold(13)[:600]:
                handle.write(json.dumps({"text": item.text, "label": item.label}) + "\n")
        env_values["BOOTSTRAP_GOLD"] = gold_path
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        **{k: str(v) for k, v in env_values.items()},
    }
    settings = Settings.model_validate(
        {k.lower(): str(v) for k, v in env_values.items() if k.lower() in Settings.model_fields}
    )
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "quick": quick,
    }
    gold = demo_gold(13)
    texts = [g.text for g in gold if g.split == "train"]
    service = Service(env, out)
    try:
        log("bootstrapping a model to serve (a short fine-tune: speed, not quality, is measured)")
        boot = service.start("bootstrap", "bootstrap")
        if boot.wait(900) != 0:
            raise RuntimeError(f"bootstrap failed; see {out}/bootstrap.log")
        store = Store(settings.store_url)

        log("1. ceiling: bare batched forward pass, in-process")
        classifier = load_classifier(version_dir(settings, 1), settings.max_length)
        sizes = [1, 8, 32] if quick else [1, 8, 16, 32, 64]
        ceiling = measure_ceiling(classifier, texts, sizes, seconds / 2)
        best = max(ceiling, key=lambda b: ceiling[b]["texts_per_s"])
        int8 = quantized(classifier)
        ceiling_int8 = measure_ceiling(int8, texts, [1, best], seconds / 2)
        dev = [g for g in gold if g.split == "test"][: 200 if quick else 1440]
        from app.ml.training import evaluate

        f1_fp32 = evaluate(classifier, [g.text for g in dev], [g.label for g in dev])["macro_f1"]
        f1_int8 = evaluate(int8, [g.text for g in dev], [g.label for g in dev])["macro_f1"]
        results["ceiling"] = {
            "fp32": ceiling,
            "int8": ceiling_int8,
            "best_batch": best,
            "test_macro_f1": {"fp32": f1_fp32, "int8": f1_int8, "n": len(dev)},
        }
        del int8

        log("2. naive baseline: pipeline behind FastAPI, one request at a time")
        naive_port = free_port()
        naive_env = {**env, "NAIVE_MODEL_DIR": str(version_dir(settings, 1))}
        naive = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.naive_app:app",
                "--port",
                str(naive_port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=naive_env,
            stdout=(out / "naive.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        naive_url = f"http://127.0.0.1:{naive_port}"
        for _ in range(200):
            try:
                httpx.post(f"{naive_url}/label", json={"text": "warm"}, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        conc = 8 if quick else 32
        results["naive"] = run_load([naive_url], "/label", texts, conc, seconds).summary()
        naive.terminate()
        naive.wait(30)

        log("3. our service: /label and /label/batch per concurrency")
        url = service.api()
        run_load([url], "/label", texts, 8, 1.0, headers=HEADERS)  # warm-up
        ours: dict[str, list[dict[str, Any]]] = {"/label": [], "/label/batch": []}
        for c in [1, 8] if quick else [1, 8, 32, 64]:
            ours["/label"].append(
                run_load([url], "/label", texts, c, seconds, headers=HEADERS).summary()
            )
            ours["/label/batch"].append(
                run_load(
                    [url], "/label/batch", texts, c, seconds, batch=16, headers=HEADERS
                ).summary()
            )
        results["service"] = ours

        log("4. swap under load: two API processes, a model published mid-run")
        url2 = service.api()
        published: dict[str, float] = {}

        def publish(elapsed: float) -> None:
            published["version"] = publish_copy(settings, store)
            published["at"] = elapsed

        swap = run_load(
            [url, url2], "/label", texts, conc, seconds * 2.5, headers=HEADERS, during=publish
        )
        new = published["version"]
        first_new = {
            u: min((t for t, uu, v in swap.versions if uu == u and v == new), default=None)
            for u in (url, url2)
        }
        swap_done = max((t for t in first_new.values() if t is not None), default=float("nan"))
        results["swap"] = {
            **swap.summary(),
            "published_version": new,
            "seconds_to_first_new_answer": {
                u: (round(t - published["at"], 2) if t else None) for u, t in first_new.items()
            },
            "p99_steady_ms": latency_summary(swap, 0, published["at"]),
            "p99_during_swap_ms": latency_summary(swap, published["at"], swap_done + 1.0),
        }

        log("5. serving while a training job runs (worker at niceness 0, then 10)")
        idle = run_load([url], "/label", texts, 8, seconds, headers=HEADERS)
        httpx.post(f"{url}/label/batch", json={"texts": texts[:200]}, headers=HEADERS, timeout=60)
        steps = 5 if quick else 25
        while_training: dict[str, Any] = {"idle": idle.summary()}
        for nice in (0, 10):
            worker = service.start(f"worker-nice{nice}", "worker", WORKER_NICE=str(nice))
            job = httpx.post(
                f"{url}/jobs",
                headers=HEADERS,
                json={
                    "pretrain_max_steps": steps,
                    "finetune_max_steps": steps,
                    "promotion_margin": 1.0,
                    "max_length": 64,
                },
            ).json()
            job_url = f"{url}/jobs/{job['id']}"
            while httpx.get(job_url, headers=HEADERS).json()["status"] != "running":
                time.sleep(0.2)
            busy = run_load([url], "/label", texts, 8, seconds, headers=HEADERS)
            while httpx.get(job_url, headers=HEADERS).json()["status"] == "running":
                time.sleep(0.5)
            while_training[f"training_nice{nice}"] = busy.summary()
            service.stop_one(worker)
        results["while_training"] = while_training
        store.dispose()
    finally:
        service.stop()

    log("6. training throughput: joint step against a naive one")
    from app.core.config import packaged_base_model

    results["training"] = measure_training(
        base or packaged_base_model(), texts, 2 if quick else 4, 8 if quick else 32, 64
    )

    (out / "bench.json").write_text(json.dumps(results, indent=2))
    print(render(results))
    log(f"wrote {out / 'bench.json'}")


def render(r: dict[str, Any]) -> str:
    best = r["ceiling"]["best_batch"]
    ceil = r["ceiling"]["fp32"][best]["texts_per_s"]
    lines = [
        "| measurement | texts/s | p50 ms | p99 ms | failed |",
        "| --- | --- | --- | --- | --- |",
        f"| ceiling: bare forward, batch {best}, fp32 | {ceil} | | | |",
        f"| ceiling: batch 1, fp32 | {r['ceiling']['fp32'][1]['texts_per_s']} | {r['ceiling']['fp32'][1]['ms_per_batch']} | | |",
        f"| ceiling: batch {best}, int8 dynamic | {r['ceiling']['int8'][best]['texts_per_s']} | | | |",
        f"| naive pipeline, concurrency {r['naive']['concurrency']} | {r['naive']['texts_per_s']} | {r['naive']['p50_ms']} | {r['naive']['p99_ms']} | {r['naive']['failed']} |",
    ]
    for path, rows in r["service"].items():
        for row in rows:
            lines.append(
                f"| ours {path}, concurrency {row['concurrency']} | {row['texts_per_s']} | {row['p50_ms']} | {row['p99_ms']} | {row['failed']} |"
            )
    s = r["swap"]
    lines.append(
        f"| swap under load (2 API processes, c={s['concurrency']}) | {s['texts_per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['failed']} |"
    )
    w = r["while_training"]
    lines.append(
        f"| c=8 idle | {w['idle']['texts_per_s']} | {w['idle']['p50_ms']} | {w['idle']['p99_ms']} | {w['idle']['failed']} |"
    )
    for nice in (0, 10):
        b = w[f"training_nice{nice}"]
        lines.append(
            f"| c=8 while a job trains, worker nice {nice} | {b['texts_per_s']} | {b['p50_ms']} | {b['p99_ms']} | {b['failed']} |"
        )
    t = r["training"]
    f1 = r["ceiling"]["test_macro_f1"]
    extra = [
        "",
        f"swap: p99 steady {s['p99_steady_ms']} ms, during swap {s['p99_during_swap_ms']} ms; "
        f"publish to first answer from v{s['published_version']}: {s['seconds_to_first_new_answer']}",
        f"int8 dynamic quantization: test macro-F1 {f1['fp32']} (fp32) vs {f1['int8']} (int8) on {f1['n']} texts",
        f"training (batch {t['batch']}): ours {t['ours']['tokens_per_s']} tokens/s, naive {t['naive']['tokens_per_s']} tokens/s, speed-up {t['speedup']}x",
    ]
    if "ours_bf16" in t:
        extra.append(
            f"training, ours with bf16 autocast: {t['ours_bf16']['tokens_per_s']} tokens/s, speed-up {t['speedup_bf16']}x over naive fp32"
        )
    return "\n".join(lines + extra)


if __name__ == "__main__":
    main()
