"""`python -m bench.gpu`: the serving ceiling and the training benchmark on a CUDA GPU,
in fp32 and under bf16 autocast.

It needs only torch, transformers and app.ml, so it runs on a GPU machine without the
service's other dependencies. Without CUDA it says so and exits 2: everything else falls
back to the CPU and is measured by `python -m bench`.

    python -m bench.gpu --base MODEL_FOLDER --texts texts.json --out gpu-results
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from app.ml.modeling import Classifier, init_classifier
from bench.training import measure_training

LABELS = ["negative", "neutral", "positive"]


def default_base() -> Path:
    from app.core.config import packaged_base_model

    return packaged_base_model()


def default_texts() -> list[str]:
    from app.store.gold_files import demo_gold

    return [g.text for g in demo_gold(13) if g.split == "train"]


def ceiling(
    classifier: Classifier, texts: list[str], sizes: list[int], seconds: float, bf16: bool
) -> dict[int, dict[str, float]]:
    """Texts/s per batch size: end to end (tokenize on the CPU, forward on the GPU, logits
    back) and the forward pass alone on batches tokenized beforehand."""
    device = classifier.model.device
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out: dict[int, dict[str, float]] = {}
    for size in sizes:
        chunks = [
            [texts[(i * size + k) % len(texts)] for k in range(size)]
            for i in range(max(1, min(64, 2048 // size)))
        ]
        encoded = [
            {
                k: v.to(device)
                for k, v in classifier.tokenizer(
                    c,
                    padding=True,
                    truncation=True,
                    max_length=classifier.max_length,
                    return_tensors="pt",
                ).items()
            }
            for c in chunks
        ]
        with amp, torch.inference_mode():
            for chunk, batch in zip(chunks, encoded, strict=True):  # every shape once
                classifier.logits(chunk)
                classifier.model(**batch)
            sync()
            done, start, i = 0, time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                classifier.logits(chunks[i % len(chunks)])
                done, i = done + size, i + 1
            end_to_end = done / (time.perf_counter() - start)
            sync()
            done, start, i = 0, time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                classifier.model(**encoded[i % len(encoded)])
                done, i = done + size, i + 1
                if i % 16 == 0:
                    sync()
            sync()
            forward = done / (time.perf_counter() - start)
        out[size] = {
            "texts_per_s": round(end_to_end, 1),
            "ms_per_batch": round(1000 * size / end_to_end, 2),
            "forward_only_texts_per_s": round(forward, 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--base", type=Path, help="encoder folder (default: the packaged one)")
    parser.add_argument("--texts", type=Path, help="a JSON list of texts (default: demo tweets)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--device", default="cuda", help="cuda, or cpu for a dry run of this script (tests)"
    )
    parser.add_argument("--steps", type=int, default=20, help="training steps timed")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: the GPU benchmark has nothing to measure", file=sys.stderr)
        sys.exit(2)
    base = args.base or default_base()
    texts = json.loads(args.texts.read_text()) if args.texts else default_texts()
    device = torch.device(args.device)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    model, tokenizer = init_classifier(base, LABELS)
    classifier = Classifier(model.eval().to(device), tokenizer, LABELS, max_length=64)
    sizes = [1, 8, 32, 128, 512]
    for name, bf16 in (("fp32", False), ("bf16", True)):
        print(f"ceiling {name}", flush=True)
        results[f"ceiling_{name}"] = ceiling(classifier, texts, sizes, args.seconds, bf16)
    del classifier, model
    torch.cuda.empty_cache()
    for batch in (32, 128):
        print(f"training, batch {batch}", flush=True)
        results[f"training_batch{batch}"] = measure_training(
            base, texts, steps=args.steps, batch=batch, max_length=64, device=device, bf16=True
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(results, indent=2))
    print(render(results))


def render(r: dict[str, Any]) -> str:
    lines = [
        f"GPU: {r['device']} (torch {r['torch']}, CUDA {r['cuda']})",
        "",
        "| serving ceiling, batch | fp32 texts/s | bf16 texts/s | bf16 forward only texts/s |",
        "| --- | --- | --- | --- |",
    ]
    for size, row in r["ceiling_fp32"].items():
        b = r["ceiling_bf16"][size]
        lines.append(
            f"| {size} | {row['texts_per_s']} | {b['texts_per_s']} | "
            f"{b['forward_only_texts_per_s']} |"
        )
    lines += [
        "",
        "| training step | naive fp32 | ours fp32 | naive bf16 | ours bf16 | ours/naive fp32 "
        "| ours/naive bf16 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in ("training_batch32", "training_batch128"):
        t = r[key]
        lines.append(
            f"| batch {t['batch']} (tokens/s) | {t['naive']['tokens_per_s']} "
            f"| {t['ours']['tokens_per_s']} | {t['naive_bf16']['tokens_per_s']} "
            f"| {t['ours_bf16']['tokens_per_s']} | {t['speedup']}x | {t['speedup_in_bf16']}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
