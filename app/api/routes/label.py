"""Labeling: answer with the active model's prediction and store it as a pseudo-label."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from app.api.deps import LabelingDep
from app.api.errors import TooLarge
from app.api.schemas import BatchLabelRequest, BatchLabelResult, LabelRequest, LabelResult
from app.core.config import Settings
from app.serving.scoring import Scored
from app.serving.store_writer import StoreWriter
from app.serving.telemetry import CONFIDENCE, TEXTS_LABELED
from app.store.pseudo_labels import Prediction

log = logging.getLogger(__name__)

router = APIRouter(tags=["label"])


def _check_sizes(texts: list[str], settings: Settings) -> None:
    for i, text in enumerate(texts):
        if len(text) > settings.max_text_chars:
            where = "text" if len(texts) == 1 else f"texts[{i}]"
            raise TooLarge(
                f"{where} has {len(text)} characters; the limit is {settings.max_text_chars}"
            )


async def _store(writer: StoreWriter, texts: list[str], scored: list[Scored]) -> list[LabelResult]:
    """Store first, answer second: a 200 always means the pseudo-label is kept."""
    ids = await writer.write(
        [
            Prediction(t, s.label, s.confidence, s.logits, s.model_version)
            for t, s in zip(texts, scored, strict=True)
        ]
    )
    for row_id, s in zip(ids, scored, strict=True):
        TEXTS_LABELED.labels(str(s.model_version)).inc()
        CONFIDENCE.labels(str(s.model_version), s.label).observe(s.confidence)
        # One line per stored row ties the request id to it; never the text (privacy).
        log.info(
            "stored pseudo-label id=%s model_version=%s label=%s",
            row_id,
            s.model_version,
            s.label,
            extra={"row_id": row_id, "model_version": s.model_version, "label": s.label},
        )
    return [
        LabelResult(
            id=row_id,
            label=s.label,
            confidence=s.confidence,
            scores=s.scores,
            model_version=s.model_version,
        )
        for row_id, s in zip(ids, scored, strict=True)
    ]


@router.post("/label", response_model=LabelResult)
async def label(body: LabelRequest, labeling: LabelingDep) -> LabelResult:
    """Label one text with the active model and store the prediction."""
    _check_sizes([body.text], labeling.settings)
    scored = await labeling.batcher.predict([body.text])
    return (await _store(labeling.writer, [body.text], scored))[0]


@router.post("/label/batch", response_model=BatchLabelResult)
async def label_batch(body: BatchLabelRequest, labeling: LabelingDep) -> BatchLabelResult:
    """Label several texts; results come back in the order of `texts`."""
    limit = labeling.settings.max_batch_texts
    if len(body.texts) > limit:
        raise TooLarge(f"{len(body.texts)} texts in one batch; the limit is {limit}")
    _check_sizes(body.texts, labeling.settings)
    scored = await labeling.batcher.predict(body.texts)
    return BatchLabelResult(results=await _store(labeling.writer, body.texts, scored))
