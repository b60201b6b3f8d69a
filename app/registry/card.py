"""The model card: the README.md of a version folder, a Hugging Face model card that
tells an operator where the model came from, how good it is and how to load it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from app.core.config import Settings


def _without_curves(value: Any) -> Any:
    """Lineage minus the per-step loss curves: parameters, not a log."""
    if isinstance(value, dict):
        return {k: _without_curves(v) for k, v in value.items() if k not in ("loss", "history")}
    return value


def _promotion_rows(comparison: Any) -> list[tuple[str, str]]:
    """What the promotion gate saw, for the model card."""
    if not isinstance(comparison, dict):
        return []
    rows = [
        (
            "promotion gate",
            f"rule `{comparison.get('rule')}`: {comparison.get('reason', '')}",
        ),
        *_judged_rows(comparison),
        (
            "compute per token",
            f"{comparison.get('relative_cost', 1.0):.2f} of the champion's",
        ),
    ]
    changed = comparison.get("test_changed_share")
    if changed is not None:
        rows.append(("test answers changed", f"{100 * changed:.1f}% of the champion's"))
    return rows


def _judged_rows(comparison: dict[str, Any]) -> list[tuple[str, str]]:
    """How many texts judged the candidate and where they came from (workers/gate.py)."""
    judged = comparison.get("judged")
    if not isinstance(judged, dict):
        return []
    rows = [
        (
            "judged on",
            f"{judged.get('gate_texts', 0)} gold gate-split texts (selected on by no model; "
            f"{judged.get('gate_disagreements', 0)} disagreements, labeled) and "
            f"{judged.get('traffic_texts', 0)} recent stored texts outside gold that "
            "neither model pre-trained on "
            f"({judged.get('traffic_disagreements', 0)} disagreements, "
            f"{judged.get('queued', 0)} queued for review)",
        )
    ]
    if comparison.get("publish") is None and comparison.get("deadline"):
        rows.append(
            (
                "decided",
                f"after review, by {comparison['deadline']} at the latest: the decision "
                "and the reviews that made it are in `GET /jobs/{id}` and `GET /models`",
            )
        )
    return rows


def _pool_rows(pool: dict[str, Any] | None) -> list[tuple[str, str]]:
    """How the job chose its pre-training texts (workers/pipeline.py `gather_pool`)."""
    if not pool:
        return []
    policy = pool.get("policy", {})
    limit = policy.get("limit") or "no limit"
    chosen = f"{pool.get('selected')} texts, newest first, one per text (limit {limit})"
    rules = []
    if policy.get("class_cap"):
        rules.append(f"at most {policy.get('per_label')} per predicted label")
    for bound, word in (("min_confidence", ">="), ("max_confidence", "<=")):
        if policy.get(bound) is not None:
            rules.append(f"confidence {word} {policy[bound]}")
    held_back = (pool.get("skipped") or {}).get("review_sample")
    if held_back:
        rules.append(f"without the {held_back} texts of the review sample, which judge it")
    ids = pool.get("id_range") or ["?", "?"]
    return [
        ("pre-training pool", chosen + "".join(f"; {rule}" for rule in rules)),
        ("pool rows read", f"{pool.get('scanned')} (ids {ids[0]} to {ids[1]} used)"),
    ]


def _teacher_rows(lineage: dict[str, Any]) -> list[tuple[str, str]]:
    """Who taught a candidate (workers/teacher.py), or how a teacher was made."""
    if lineage.get("kind") == "teacher":
        selection = lineage.get("selection") or {}
        warm = lineage.get("warm_from")
        further = f"teacher v{warm} fine-tuned further on " if warm is not None else ""
        return [
            ("teacher of", "students of later jobs (`teacher.version`, or the newest)"),
            (
                "fine-tuned",
                f"{further}{lineage.get('gold_train')} gold train texts, best dev checkpoint "
                f"at step {selection.get('best_step', '?')}, "
                f"in {lineage.get('finetune_seconds')} s",
            ),
        ]
    taught = lineage.get("taught_by")
    if not isinstance(taught, dict):
        return []
    pool = lineage.get("pool") or {}
    scored = pool.get("teacher") if isinstance(pool, dict) else None
    shown = str(taught.get("reason", ""))
    if taught.get("version") is not None:
        shown = f"teacher v{taught['version']}, {shown}"
    if isinstance(scored, dict):
        shown += (
            f"; it scored {scored.get('scored_now')} pool texts now ({scored.get('form')}) "
            f"and {scored.get('from_cache')} from its kept scores"
        )
    if isinstance(taught.get("pool_passes"), int | float):
        shown += f"; the student took {taught['pool_passes']:g}x the passes over the pool"
    return [("taught by", shown)]


def form_rows(forms: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The serving forms built with the version, with their dev macro-F1
    (app/ml/serving_forms.py)."""
    if not forms:
        return []
    rows = []
    for name in ("fp32", "int8"):
        form = forms.get(name)
        if not isinstance(form, dict):
            continue
        if "error" in form:
            rows.append((f"serving form {name}", f"not built: {form['error']}"))
            continue
        f1 = form.get("dev_macro_f1")
        scored = (
            f"dev macro-F1 {f1} (ONNX Runtime, {forms.get('dev_n')} texts)" if f1 else "not scored"
        )
        rows.append((f"serving form {name}", f"`{form['file']}`, {scored}"))
    if "int8_drop_points" in forms:
        rows.append(("int8 drop", f"{forms['int8_drop_points']} macro-F1 points below fp32 on dev"))
    bf16 = forms.get("bf16")
    if isinstance(bf16, dict):
        # No file: the weights are cast to bfloat16 when an API process loads them.
        if "dev_macro_f1" in bf16:
            shown = f"dev macro-F1 {bf16['dev_macro_f1']} (PyTorch, {forms.get('dev_n')} texts)"
            if "bf16_drop_points" in forms:
                shown += f", {forms['bf16_drop_points']} points below fp32"
        else:
            shown = bf16.get("unavailable") or bf16.get("error") or "not scored"
        rows.append(("serving form bf16", f"the weights cast at load, {shown}"))
    return rows


def model_card(
    settings: Settings,
    *,
    version: int,
    labels: list[str],
    parent_version: int | None,
    job_id: str | None,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    decision: str,
    forms: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> str:
    """The README.md of a version folder: a Hugging Face model card (its front matter lets
    the Hub and `huggingface_hub.ModelCard` read it) with what an operator needs to know
    about the model without the service: where it came from, how good it is, how to load it."""
    made_by = f"retraining job `{job_id}`" if job_id else "bootstrap (the first fine-tuning)"
    how = {
        "retrain": "A text classifier made by pfp-service: trained on the service's own "
        "predictions (a teacher's logits on user text), then fine-tuned on gold labels.",
        "teacher": "A teacher made by pfp-service: a stronger encoder fine-tuned on gold "
        "labels, which scores user text for the students that jobs train. A job never "
        "publishes it; an operator may serve it (`POST /models/{version}/activate`).",
    }.get(
        str(lineage.get("kind")),
        "A text classifier made by pfp-service: the base encoder fine-tuned on gold labels.",
    )
    parent = f"v{parent_version}" if parent_version is not None else "none (the first model)"
    is_teacher = lineage.get("kind") == "teacher" and "start_path" in lineage
    # A later teacher version continues from an earlier one: its base is still the encoder.
    base = lineage.get("base_encoder", lineage.get("start_path")) if is_teacher else None
    rows = [
        ("version", f"v{version}"),
        ("parent version", parent),
        ("made by", made_by),
        ("job decision", f"{decision} (whether it serves now: `GET /models`)"),
        # A teacher is fine-tuned from its own encoder, not from the service's base model.
        ("base model", f"`{base or settings.base_model_path}`"),
        ("started from", f"`{lineage.get('start_path', settings.base_model_path)}`"),
        ("labels", ", ".join(f"{i} `{label}`" for i, label in enumerate(labels))),
        ("encoder layers", str(lineage.get("layers", "as the base model"))),
        *_teacher_rows(lineage),
        *_pool_rows(lineage.get("pool")),
        *_promotion_rows(lineage.get("comparison")),
        *form_rows(forms),
        ("written", (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    split_rows = [
        f"| {split} | {m.get('accuracy', '')} | {m.get('macro_f1', '')} | {m.get('n', '')} |"
        for split, m in metrics.items()
        if isinstance(m, dict)
    ]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags:",
        "- pfp-service",
        "---",
        "",
        f"# pfp-service model v{version}",
        "",
        how,
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "## Metrics on the gold data",
        "",
        "| split | accuracy | macro-F1 | examples |",
        "| --- | --- | --- | --- |",
        *(split_rows or ["| (none) | | | |"]),
        "",
        "## Training parameters",
        "",
        "```json",
        json.dumps(_without_curves(lineage), indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## How to load",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'classify = pipeline("text-classification", model="path/to/v{version}")',
        'classify("@united thanks for the upgrade!")',
        "```",
        "",
        "`config.json` carries the labels (`id2label`, `label2id`); `pfp_version.json` holds "
        "these facts as JSON, loss curves included.",
        "",
    ]
    return "\n".join(lines)
