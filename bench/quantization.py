"""`python -m bench.quantization MODEL_FOLDER [--max-length 128]`: which ONNX Runtime int8
quantization of a published version keeps its quality, and how fast each runs.

For the version's `model.onnx` and each way of quantizing it: dev and test macro-F1 on the
demo data's gold splits (the splits the service's first model was trained and selected
on) and texts/s at batch 8 with every core, in one process, one after the other: the
machine is noisy (docs/benchmarks.md says by how much), so rerun before trusting a small
speed difference. What
app/ml/serving_forms.py builds at publish time was chosen from these runs
(docs/benchmarks.md, "Serving forms").
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.ml.modeling import Classifier, load_classifier
from app.ml.onnx_runtime import OrtModel, ort_session
from app.ml.training import evaluate
from app.store.gold_files import demo_gold


def _ways() -> dict[str, dict[str, Any]]:
    from onnxruntime.quantization import QuantType

    return {
        "MatMul only, int8 per channel (served)": {
            "op_types_to_quantize": ["MatMul"],
            "per_channel": True,
        },
        "ONNX Runtime's default ops, int8 per channel": {"per_channel": True},
        "ONNX Runtime's default ops, int8 per tensor": {},
        "ONNX Runtime's default ops, uint8 per tensor": {"weight_type": QuantType.QUInt8},
    }


def _speed(classifier: Classifier, texts: list[str], batch: int = 8, seconds: float = 4.0) -> float:
    classifier.logits(texts[:batch])
    done, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classifier.logits([texts[(i + k) % len(texts)] for k in range(batch)])
        done += batch
        i += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quantization", description=__doc__)
    parser.add_argument("folder", type=Path, help="a published version folder with model.onnx")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench-results/quantization"))
    args = parser.parse_args()
    from onnxruntime.quantization import quantize_dynamic

    args.out.mkdir(parents=True, exist_ok=True)
    source = load_classifier(args.folder, args.max_length)
    gold = demo_gold(13)
    splits = {s: [g for g in gold if g.split == s] for s in ("dev", "test")}
    texts = [g.text for g in gold if g.split == "train"][:512]

    def measure(onnx_file: Path) -> dict[str, float]:
        classifier = replace(source, model=OrtModel(ort_session(onnx_file)))  # type: ignore[arg-type]
        row = {
            f"{split}_macro_f1": round(
                100
                * evaluate(classifier, [g.text for g in rows], [g.label for g in rows])["macro_f1"],
                2,
            )
            for split, rows in splits.items()
        }
        return {**row, "texts_per_s": round(_speed(classifier, texts), 1)}

    results: dict[str, dict[str, float]] = {"fp32": measure(args.folder / "model.onnx")}
    print(f"fp32: {results['fp32']}", flush=True)
    for n, (name, options) in enumerate(_ways().items()):
        target = args.out / f"way-{n}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(args.folder / "model.onnx", target, **options)
        row = measure(target)
        for split in ("dev", "test"):
            row[f"{split}_drop"] = round(
                results["fp32"][f"{split}_macro_f1"] - row[f"{split}_macro_f1"], 2
            )
        row["speedup"] = round(row["texts_per_s"] / results["fp32"]["texts_per_s"], 2)
        results[name] = row
        print(f"{name}: {row}", flush=True)
    (args.out / "quantization.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
