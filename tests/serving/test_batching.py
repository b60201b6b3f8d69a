"""The micro-batcher's forward passes, the served int8 form, and how a worker yields the
CPU: what a user relies on is the same answer, in the same order, whatever the batching."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.ml.modeling import init_classifier, load_classifier
from app.registry import version_dir
from app.serving.batch_bounds import fixed_bounds, plan_forward_passes
from app.serving.form_choice import ServedModel
from app.serving.micro_batcher import MicroBatcher
from app.serving.scoring import score
from app.serving.store_writer import StoreWriter
from app.store.database import Store
from tests.conftest import ADMIN

LENGTHS = [random.Random(3).randint(3, 60) for _ in range(200)]


@pytest.mark.parametrize(("max_texts", "max_tokens"), [(32, 2048), (8, 100), (4, 10), (1, 1000)])
def test_forward_passes_respect_both_bounds_and_cover_every_text_once(max_texts, max_tokens):
    passes = plan_forward_passes(LENGTHS, max_texts, max_tokens)
    assert sorted(i for p in passes for i in p) == list(range(len(LENGTHS)))
    for p in passes:
        assert 1 <= len(p) <= max_texts
        padded = len(p) * max(LENGTHS[i] for i in p)
        # Only a text too long for the token bound on its own may exceed it, alone.
        assert padded <= max_tokens or len(p) == 1


def test_one_long_text_does_not_make_short_ones_pay_for_its_padding():
    lengths = [5] * 7 + [120]
    passes = plan_forward_passes(lengths, max_texts=8, max_tokens=256)
    assert passes == [[0, 1, 2, 3, 4, 5, 6], [7]]
    padded = sum(len(p) * max(lengths[i] for i in p) for p in passes)
    assert padded == 7 * 5 + 120  # against 8 x 120 = 960 in one pass


def test_server_scores_match_one_text_at_a_time_in_caller_order(published_copy: Settings):
    """Gathered texts are re-ordered by length into passes; every caller must still get
    its own text's prediction, equal to scoring it alone."""
    settings = published_copy.model_copy(
        update={"infer_max_batch": 4, "infer_max_batch_tokens": 40}
    )
    classifier = load_classifier(version_dir(settings, 1), settings.max_length)
    served = ServedModel(1, classifier, bounds=fixed_bounds(settings))
    rng = random.Random(7)
    words = [
        "delayed",
        "bag",
        "crew",
        "seat",
        "late",
        "great",
        "awful",
        "thanks",
        "flight",
        "refund",
    ]
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 25))) for _ in range(23)]
    gathered = score(served, texts)
    alone = [score(served, [t])[0] for t in texts]
    assert [s.label for s in gathered] == [s.label for s in alone]
    for a, b in zip(gathered, alone, strict=True):
        assert a.logits == pytest.approx(b.logits, abs=1e-4)
    reference = classifier.logits(texts)
    assert torch.allclose(torch.tensor([s.logits for s in gathered]), reference, atol=1e-4)


def test_int8_serving_answers_and_stores(published_copy: Settings):
    settings = published_copy.model_copy(update={"infer_backend": "torch-int8"})
    app = create_app(settings)
    with TestClient(app, headers=ADMIN) as client:
        r = client.post("/label/batch", json={"texts": ["@united lost my bag", "great crew"]})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["model_version"] for x in results] == [1, 1]
        served = app.state.model_server.current.classifier.model
        # The Linear layers really are the quantized kind, not the float ones.
        kinds = {type(m).__module__ for m in served.modules() if "Linear" in type(m).__name__}
        assert any("quantized" in k for k in kinds), kinds


def test_int8_keeps_the_predictions_of_a_trained_classifier(tiny_base: Path):
    """int8 must not change what the model says beyond rounding (the benchmark measures
    macro-F1 on the real model; here a random head on the tiny model)."""
    from app.ml.modeling import Classifier, quantize_int8

    torch.manual_seed(0)
    model, tokenizer = init_classifier(tiny_base, ["a", "b", "c"])
    fp32 = Classifier(model.eval(), tokenizer, ["a", "b", "c"], 32)
    int8 = quantize_int8(fp32)
    texts = [f"text number {i} about flights" for i in range(16)]
    assert torch.allclose(fp32.logits(texts), int8.logits(texts), atol=0.05)
    assert fp32.model is not int8.model  # the fp32 model is left as it was


def test_serving_marks_itself_busy_for_training_on_the_same_machine(tmp_path: Path):
    from app.core.serving_beacon import ServingBeacon, TrainingYield, machine_id, serving_busy

    models = tmp_path / "models"
    assert not serving_busy(models)  # no API process has served yet
    yielder = TrainingYield(models, min_share=0.5, poll=0.01)
    time.sleep(0.05)
    start = time.monotonic()
    yielder()
    assert time.monotonic() - start < 0.05  # nothing to yield to

    beacon = ServingBeacon(models)
    beacon.mark_busy()
    assert serving_busy(models)
    # An API process on another machine (another boot id) does not make training wait.
    beacon.path.rename(beacon.path.with_name(f"another-host-{os.getpid()}"))
    assert not serving_busy(models)
    beacon._last = 0.0
    beacon.mark_busy()
    # Busy: the pause is bounded by (1 / min_share - 1) x the step before it (here 1x).
    time.sleep(0.2)
    start = time.monotonic()
    yielder()
    paused = time.monotonic() - start
    assert 0.15 <= paused < 0.6, paused
    assert yielder.paused_seconds >= 0.15
    # A beacon left by a process that stopped serving more than a second ago is stale.
    stale = time.time() - 5
    os.utime(beacon.path, (stale, stale))
    assert not serving_busy(models)
    beacon.remove()
    assert not beacon.path.exists() and machine_id()


def test_a_job_that_does_not_share_never_pauses(tmp_path: Path):
    from app.core.serving_beacon import ServingBeacon, TrainingYield

    ServingBeacon(tmp_path).mark_busy()
    yielder = TrainingYield(tmp_path, min_share=1.0)
    time.sleep(0.1)
    start = time.monotonic()
    yielder()
    assert time.monotonic() - start < 0.05


def test_the_micro_batcher_signals_while_it_scores(published_copy: Settings):
    from app.core.serving_beacon import serving_busy

    classifier = load_classifier(version_dir(published_copy, 1), published_copy.max_length)
    served = ServedModel(1, classifier)
    batcher = MicroBatcher(published_copy, lambda: served)
    assert not serving_busy(published_copy.models_path)
    batcher._score(served, ["a text"])
    assert serving_busy(published_copy.models_path)


def _scores(settings: Settings, texts: list[str]) -> list[dict[str, float]]:
    with TestClient(create_app(settings), headers=ADMIN) as client:
        r = client.post("/label/batch", json={"texts": texts})
        assert r.status_code == 200, r.text
        return [x["scores"] for x in r.json()["results"]]


def _same_scores(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        assert all(abs(x[k] - y[k]) < 1e-4 for k in x)


def test_onnxruntime_serving_gives_torch_answers(published_copy: Settings):
    """INFER_BACKEND=onnxruntime (the default) answers with PyTorch's scores in its fp32
    form. (Its int8 form, served where the gate on dev lets it, rounds differently on
    different CPUs: the gate, not this test, holds it to fp32's quality.)"""
    texts = ["@united lost my bag", "great crew, thanks", "ok"]
    torch_scores = _scores(published_copy.model_copy(update={"infer_backend": "torch"}), texts)
    fp32 = published_copy.model_copy(update={"infer_int8": "never"})
    _same_scores(torch_scores, _scores(fp32, texts))


def test_a_version_without_its_onnx_export_serves_with_torch_untouched(
    published_copy: Settings, caplog: pytest.LogCaptureFixture
):
    """A published folder is never written again: an API process serves a version that
    lacks its ONNX forms with PyTorch instead of exporting them into the live folder."""
    texts = ["@united lost my bag", "great crew, thanks", "ok"]
    folder = version_dir(published_copy, 1)
    (folder / "model.onnx").unlink()
    (folder / "model.int8.onnx").unlink()
    before = sorted(p.name for p in folder.iterdir())
    served = _scores(published_copy, texts)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert "published without model.onnx" in caplog.text
    assert "serving it with PyTorch" in caplog.text
    torch_settings = published_copy.model_copy(update={"infer_backend": "torch"})
    _same_scores(_scores(torch_settings, texts), served)


def test_published_versions_carry_their_onnx_export(published_copy: Settings):
    """The worker exports at publish time, so API processes only load it at a swap."""
    assert published_copy.infer_backend == "onnxruntime"
    assert (version_dir(published_copy, 1) / "model.onnx").is_file()


def test_the_servers_threads_carry_their_names_in_the_os(settings: Settings) -> None:
    """`top -H` and `ps -L` tell the inference thread and the store writer from the event
    loop (and bench.cpu_split splits a request's CPU by them)."""
    import threading

    store = Store(settings.store_url)
    try:
        batcher = MicroBatcher(settings, lambda: None)
        writer = StoreWriter(store)
        for pool, name in ((batcher._infer, "pfp-infer"), (writer._thread, "pfp-store")):
            tid = pool.submit(threading.get_native_id).result()
            assert Path(f"/proc/{os.getpid()}/task/{tid}/comm").read_text().strip() == name
            pool.shutdown()
    finally:
        store.dispose()


def test_the_batcher_waits_for_the_callers_it_answered_and_never_for_a_lone_one(
    published_copy: Settings,
) -> None:
    """Callers answered together send again a round trip later: the next pass waits for
    them (not for the whole INFER_MAX_WAIT_MS), and a lone caller never waits."""
    import asyncio

    settings = published_copy.model_copy(
        update={"infer_max_wait_ms": 300.0, "infer_max_batch": 32, "infer_max_batch_tokens": 4096}
    )
    classifier = load_classifier(version_dir(settings, 1), settings.max_length)
    served = ServedModel(1, classifier, bounds=fixed_bounds(settings))
    batcher = MicroBatcher(settings, lambda: served)
    gathered: list[int] = []
    scored = batcher._score

    def recording(served: ServedModel, texts: list[str]) -> list:  # type: ignore[type-arg]
        gathered.append(len(texts))
        return scored(served, texts)

    batcher._score = recording  # type: ignore[method-assign]

    async def scenario() -> tuple[float, float]:
        await batcher.start()
        began = time.perf_counter()
        for _ in range(5):
            await batcher.predict(["a lone text"])
        lone = time.perf_counter() - began

        async def caller(i: int) -> None:
            for _ in range(6):
                await batcher.predict([f"text number {i}"])
                await asyncio.sleep(0.005)  # the caller's round trip

        gathered.clear()
        began = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(8)))
        together = time.perf_counter() - began
        await batcher.stop()
        return lone, together

    lone, together = asyncio.run(scenario())
    assert lone < 0.3, lone  # five answers, not even one wait of 0.3 s
    assert gathered == [8] * 6, gathered  # every pass had all eight callers
    assert together < 1.0, together  # six rounds, not six waits of 0.3 s
