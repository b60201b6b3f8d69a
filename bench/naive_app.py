"""The naive baseline: a plain transformers pipeline behind a FastAPI route, one request
at a time. Run with NAIVE_MODEL_DIR set: `uvicorn bench.naive_app:app`."""

from __future__ import annotations

import os
import threading

from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

classifier = pipeline("text-classification", model=os.environ["NAIVE_MODEL_DIR"], top_k=None)
lock = threading.Lock()
app = FastAPI()


class LabelRequest(BaseModel):
    text: str


@app.post("/label")
def label(body: LabelRequest) -> dict:
    with lock:
        scores: list[dict] = classifier(body.text)[0]  # type: ignore[assignment,index]
    best = max(scores, key=lambda s: s["score"])
    return {"label": best["label"], "confidence": best["score"], "model_version": 0}
