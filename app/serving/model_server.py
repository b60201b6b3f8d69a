"""The model server inside each API process.

It holds the active classifier, gathers concurrent requests into micro-batches that run
off the event loop, and swaps to a newly activated version by loading and warming it
beside the old one, then replacing one reference. A batch pins the model it started
with, so requests in flight finish on that model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from app.core.config import Settings
from app.core.logs import request_id
from app.core.serving_beacon import ServingBeacon
from app.ml.modeling import Classifier, load_classifier
from app.ml.onnx_runtime import OnnxUnavailable
from app.ml.serving_forms import BF16_FORM, bf16_gate, choose_form, load_form
from app.registry import version_dir
from app.serving.batch_callers import failed_alone, named_thread, plan_forward_passes, settle
from app.serving.batch_tuning import (
    DEFAULT_MAX_TEXTS,
    DEFAULT_MAX_TOKENS,
    WITHIN,
    BatchBounds,
    model_shape,
    one_load_at_a_time,
    speed_at,
    tuned_bounds,
)
from app.serving.telemetry import BATCH_TEXTS, QUEUE_TEXTS, show_served
from app.store import versions
from app.store.database import Store

log = logging.getLogger(__name__)


class NoActiveModel(RuntimeError):
    """No model has been published yet (the first fine-tuning has not finished)."""


class ModelOverloaded(RuntimeError):
    """More texts wait for the model than INFER_QUEUE_LIMIT allows."""


class ShuttingDown(RuntimeError):
    """The process is stopping and takes no new work."""


class UnscorableText(ValueError):
    """The model fails on these texts of a request while it scores others: the input,
    not the model, is at fault."""

    def __init__(self, positions: list[int], cause: BaseException) -> None:
        self.positions = positions
        self.cause = f"{type(cause).__name__}: {cause}"
        where = ", ".join(f"texts[{i}]" for i in positions[:10])
        super().__init__(f"the model cannot score {where} ({self.cause})")


# Scored alone when a request fails, to tell a bad text from a broken model.
_CANARY = "ok"


@dataclass(frozen=True)
class ServedModel:
    """A version ready to serve: the classifier, which form of it runs and why, and the
    micro-batch bounds chosen for it."""

    version: int
    classifier: Classifier
    form: str = "torch fp32"
    form_reason: str = ""
    bounds: BatchBounds = field(
        default_factory=lambda: BatchBounds(DEFAULT_MAX_TEXTS, DEFAULT_MAX_TOKENS, "default")
    )
    # texts/s of each form measured against this one at load, where there were several.
    compared: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Scored:
    """One text's prediction, stamped with the version that made it."""

    label: str
    confidence: float
    scores: dict[str, float]
    logits: list[float]
    model_version: int


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[list[Scored]]
    enqueued: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=request_id.get)


# Tests load their own classifiers; the registry's loader also chooses form and bounds.
Loader = Callable[[int], Classifier | ServedModel]


class ModelServer:
    def __init__(self, settings: Settings, store: Store, loader: Loader | None = None) -> None:
        self.settings = settings
        self.store = store
        self.current: ServedModel | None = None
        # activation id -> why this process refused to load its version. Keyed by the
        # activation, not the version: activating a version again gives it a fresh try.
        self.refused: dict[int, str] = {}
        self._loader = loader or self._load_from_registry
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        # One inference thread: torch already spreads one forward pass over the cores.
        self._infer = named_thread("infer", "pfp-infer")
        self._swap_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Texts accepted but not yet answered: the permit count behind back-pressure.
        self._waiting_texts = 0
        self._closing = False
        # Tells a training job on this machine to pause while this process serves.
        self._beacon = ServingBeacon(settings.models_path)
        self.processes, self.threads = settings.api_layout

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        torch.set_num_threads(self.threads)
        await self.sync()
        self._tasks = [
            asyncio.create_task(self._batch_loop(), name="batcher"),
            asyncio.create_task(self._watch_loop(), name="swap-watcher"),
        ]

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Refuse new work, let accepted texts finish (their answers are stored by the
        routes that await them), then stop."""
        self._closing = True
        deadline = asyncio.get_running_loop().time() + drain_seconds
        while self._waiting_texts and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._infer.shutdown(wait=False, cancel_futures=True)
        self._beacon.remove()

    def wake(self) -> None:
        """Check the store for a new active model now (a swap notice arrived)."""
        self._wake.set()

    # -- swapping -----------------------------------------------------------------------

    def _load_from_registry(self, version: int) -> ServedModel:
        # Siblings on this machine load one after the other: each load takes a core for
        # seconds, and would skew the measurement of the bounds beside it.
        with one_load_at_a_time(self.settings.models_path):
            return self._load(version)

    def _load(self, version: int) -> ServedModel:
        with self.store.session() as session:
            row = versions.get_version(session, version)
            if row is None or row.state != "ready":
                raise RuntimeError(f"v{version} is not a ready version in the registry")
        folder = version_dir(self.settings, version)
        shape = model_shape(folder, self.settings.max_length)
        candidates = [self._build(version, folder, form, why) for form, why in self._forms(folder)]
        served = [
            ServedModel(version, classifier, form, reason, self._measured(classifier, shape, form))
            for form, reason, classifier in candidates
        ]
        chosen = served[0] if len(served) == 1 else self._faster(served)
        log.info("v%s: serving %s (%s)", version, chosen.form, chosen.form_reason)
        return chosen

    def _forms(self, folder: Path) -> list[tuple[str, str]]:
        """The forms this version may be served in here, each with why: one, or the ONNX
        form and bf16 (both within their quality gates, to be measured against each
        other)."""
        s = self.settings
        if s.infer_backend == "torch-int8":
            return [("torch int8", "INFER_BACKEND=torch-int8 (not gated)")]
        if s.infer_backend == "torch":
            forms = [("torch fp32", "INFER_BACKEND=torch")]
        else:
            choice = choose_form(folder, s.infer_int8, s.infer_int8_max_drop)
            forms = [(f"onnxruntime {choice.form}", choice.reason)]
        allowed, why = bf16_gate(folder, s.infer_bf16, s.infer_bf16_max_drop)
        if allowed and s.infer_bf16 == "always":
            return [(BF16_FORM, why)]
        if allowed:
            forms.append((BF16_FORM, why))
        else:
            forms = [(form, f"{reason}; not bf16: {why}") for form, reason in forms]
        return forms

    def _build(
        self, version: int, folder: Path, form: str, reason: str
    ) -> tuple[str, str, Classifier]:
        """`form` of the version, warmed up; PyTorch where ONNX Runtime cannot run it."""
        try:
            classifier = load_form(folder, form, self.settings.max_length, self.threads)
        except OnnxUnavailable as exc:
            # The version itself is fine: serve it with PyTorch rather than refuse it.
            log.warning("v%s: ONNX Runtime unavailable (%s); serving it with PyTorch", version, exc)
            form, reason = "torch fp32", f"ONNX Runtime unavailable: {exc}"
            classifier = load_classifier(folder, self.settings.max_length)
        # Warm up so the first real request does not pay for lazy initialisation.
        classifier.logits(["warm-up text"])
        return form, reason, classifier

    def _measured(self, classifier: Classifier, shape: str, form: str) -> BatchBounds:
        try:
            return self._bounds(classifier, shape, form)
        except Exception as exc:  # a measurement that fails must not refuse a good version
            log.warning("%s: micro-batch bounds not measured (%s); using the defaults", form, exc)
            return self._fixed_bounds()

    def _faster(self, served: list[ServedModel]) -> ServedModel:
        """Of forms that all passed their quality gates, the one that ran the most texts/s
        at its own bounds (as measured for them or, where the settings fix the bounds, in
        a short run at those), except that a form within WITHIN of the fastest with larger
        passes wins: as for the bounds, each pass costs the service more than this
        measurement sees. On an AMX Xeon, int8 ran 634 texts/s at passes of up to 8 texts
        and bf16 621 at 32; through the service at concurrency 32, int8 served 493.6-520.3
        texts/s in four runs and bf16 554.8-574.2 in two (docs/benchmarks.md). With
        INFER_TUNE_SECONDS=0 nothing is measured and the first, the ONNX form, serves."""
        served = [self._with_speed(s) for s in served]
        speeds = {s.form: v for s in served if (v := s.bounds.texts_per_s) is not None}
        if len(speeds) < len(served):
            first, others = served[0], ", ".join(s.form for s in served[1:])
            why = f"{first.form_reason}; {others} not compared (the bounds were not measured)"
            return replace(first, form_reason=why)
        fastest = max(speeds.values())
        close = [s for s in served if speeds[s.form] >= (1 - WITHIN) * fastest]
        best = max(close, key=lambda s: (s.bounds.max_texts, speeds[s.form]))

        def shown(s: ServedModel) -> str:
            return f"{speeds[s.form]:.0f} texts/s at up to {s.bounds.max_texts} texts a pass"

        against = "; ".join(f"{s.form} {shown(s)}" for s in served if s is not best)
        why = f"{best.form_reason}; measured here {shown(best)}, against {against}"
        if speeds[best.form] < fastest:
            why += f" (within {WITHIN:.0%} of the fastest, with larger passes)"
        return replace(best, form_reason=why, compared=speeds)

    def _with_speed(self, served: ServedModel) -> ServedModel:
        """`served` with the texts/s of its form at its bounds, measured now where its
        bounds were set rather than measured (not cached: the settings can change)."""
        seconds = self.settings.infer_tune_seconds
        if served.bounds.texts_per_s is not None or seconds <= 0:
            return served
        bounds = served.bounds
        try:
            speed = speed_at(
                served.classifier, self._sample_texts(), bounds, seconds / 3, self.processes
            )
        except Exception as exc:  # as for the bounds: a failed measurement refuses nothing
            log.warning("%s: speed not measured (%s)", served.form, exc)
            return served
        measured = {f"texts={bounds.max_texts}": round(speed, 1)}
        return replace(served, bounds=replace(bounds, measured=measured))

    def _bounds(self, classifier: Classifier, shape: str, form: str) -> BatchBounds:
        """The micro-batch bounds for this version: the settings', else measured (or
        cached from an earlier measurement of this form on this CPU)."""
        fixed_texts, fixed_tokens = (
            self.settings.infer_max_batch,
            self.settings.infer_max_batch_tokens,
        )
        if (fixed_texts and fixed_tokens) or self.settings.infer_tune_seconds <= 0:
            return self._fixed_bounds()
        tuned = tuned_bounds(
            classifier,
            self._sample_texts,
            models_path=self.settings.models_path,
            shape=shape,
            form=form.replace(" ", "-"),
            threads=self.threads,
            seconds=self.settings.infer_tune_seconds,
            processes=self.processes,
        )
        if fixed_texts or fixed_tokens:  # one bound set, the other measured
            return replace(
                tuned,
                max_texts=fixed_texts or tuned.max_texts,
                max_tokens=fixed_tokens or tuned.max_tokens,
                source=f"{tuned.source}, partly settings",
            )
        return tuned

    def _fixed_bounds(self) -> BatchBounds:
        """The bounds as set, the defaults where unset (nothing measured)."""
        texts, tokens = self.settings.infer_max_batch, self.settings.infer_max_batch_tokens
        return BatchBounds(
            texts or DEFAULT_MAX_TEXTS,
            tokens or DEFAULT_MAX_TOKENS,
            "settings" if texts or tokens else "default",
        )

    def _sample_texts(self, count: int = 256) -> list[str]:
        """Texts like those this process will serve: the store's newest, else gold."""
        from sqlalchemy import select

        from app.store.tables import GoldExample, PseudoLabel

        with self.store.session() as session:
            texts = list(
                session.scalars(
                    select(PseudoLabel.text).order_by(PseudoLabel.id.desc()).limit(count)
                )
            )
            if len(texts) < count // 4:
                texts += session.scalars(select(GoldExample.text).limit(count - len(texts)))
        return texts

    async def sync(self) -> None:
        """Load the store's active version if it is not the one served."""
        async with self._swap_lock:
            active = await asyncio.to_thread(self._read_active)
            if active is None:
                return
            activation, wanted = active
            if (self.current and self.current.version == wanted) or activation in self.refused:
                return
            try:
                loaded = await asyncio.get_running_loop().run_in_executor(
                    None, self._loader, wanted
                )
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                self.refused[activation] = reason
                kept = f"v{self.current.version}" if self.current else "no model"
                log.error("refused model v%s (%s); still serving %s", wanted, reason, kept)
                await asyncio.to_thread(self._record_refusal, wanted, reason)
                return
            if not isinstance(loaded, ServedModel):  # a loader of tests: bounds as set
                loaded = ServedModel(wanted, loaded, bounds=self._fixed_bounds())
            previous = self.current
            self.current = loaded
            show_served(wanted, loaded.form, loaded.bounds.max_texts, loaded.bounds.max_tokens)
            log.info(
                "now serving v%s (was %s)", wanted, f"v{previous.version}" if previous else "none"
            )

    def _read_active(self) -> tuple[int, int] | None:
        with self.store.session() as session:
            return versions.active_activation(session)

    def _record_refusal(self, version: int, reason: str) -> None:
        try:
            with self.store.session() as session:
                row = versions.get_version(session, version)
                if row is not None:
                    row.error = f"refused by an API process: {reason}"
        except Exception:
            log.exception("could not record the refusal of v%s", version)

    async def _watch_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.swap_poll_seconds)
            self._wake.clear()
            try:
                await self.sync()
            except Exception as exc:  # a store outage must not kill the watcher
                log.warning("model sync failed: %s", exc)

    # -- inference ----------------------------------------------------------------------

    async def predict(self, texts: list[str]) -> list[Scored]:
        if self._closing:
            raise ShuttingDown("this API process is shutting down; retry on another")
        if self.current is None:
            raise NoActiveModel("no model is active yet: the first model is still being trained")
        limit = self.settings.infer_queue_limit
        if self._waiting_texts + len(texts) > limit:
            raise ModelOverloaded(
                f"{self._waiting_texts} texts are waiting for the model (limit {limit}); "
                "retry shortly"
            )
        future: asyncio.Future[list[Scored]] = asyncio.get_running_loop().create_future()
        self._waiting_texts += len(texts)
        QUEUE_TEXTS.inc(len(texts))
        try:
            self._queue.put_nowait(_Pending(texts, future))
            return await future
        finally:
            self._waiting_texts -= len(texts)
            QUEUE_TEXTS.dec(len(texts))

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        max_wait = self.settings.infer_max_wait_ms / 1000
        last_gathered = 1
        while True:
            pending = [await self._queue.get()]
            # The bound of the model serving now (it changes with a swap).
            limit = self.current.bounds.max_texts if self.current else DEFAULT_MAX_TEXTS
            count = len(pending[0].texts)
            # Take what queued while the last pass ran; then wait, at most max_wait, only
            # until as many requests as the last pass answered have come: those callers
            # are about to send again, and a pass started before they do runs a smaller,
            # slower-per-text batch. A lone client (1 request) never waits. Measured with
            # bf16 at concurrency 32 on 2 API processes (docs/benchmarks.md): a fixed
            # 2 ms wait gathered 9-10 texts a pass and served 499-508 texts/s; waiting for
            # the answered callers gathered 14-16 and served 583-605, the same with a cap
            # of 6 or 12 ms: it stops waiting once they are back. Where fewer come back
            # (clients left), one pass waits out the cap and the next expects fewer.
            deadline = loop.time() + (max_wait if last_gathered > 1 else 0.0)
            while count < limit:
                if not self._queue.empty():
                    item = self._queue.get_nowait()
                elif len(pending) >= last_gathered:
                    break
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                pending.append(item)
                count += len(item.texts)
            last_gathered = len(pending)
            pending = [p for p in pending if not p.future.done()]  # callers that gave up
            if not pending:
                continue
            served = self.current
            assert served is not None
            texts = [t for p in pending for t in p.texts]
            outcome: list[Scored] | BaseException
            try:
                outcome = await loop.run_in_executor(self._infer, self._score, served, texts)
            except Exception as exc:
                # One request's text must not fail the others gathered with it: score
                # each request alone and fail only the ones that fail by themselves.
                outcomes = await loop.run_in_executor(
                    self._infer, self._score_each, served, pending, exc
                )
                for p, each in zip(pending, outcomes, strict=True):
                    settle([p.future], [len(p.texts)], each)
                continue
            settle([p.future for p in pending], [len(p.texts) for p in pending], outcome)

    def _score_each(
        self, served: ServedModel, pending: list[_Pending], batch_error: Exception
    ) -> list[list[Scored] | BaseException]:
        outcomes: list[list[Scored] | BaseException] = []
        for p in pending:
            # A batch of one request has just failed as a whole: it is not scored again.
            error: Exception | None = batch_error if len(pending) == 1 else None
            if error is None:
                try:
                    outcomes.append(self._score(served, p.texts))
                    continue
                except Exception as exc:
                    error = exc
            blamed = self._blame(served, p.texts, error)
            if isinstance(blamed, UnscorableText):
                failed_alone("model", p.request_id, blamed)
            else:
                log.error("the model failed on request %s: %s", p.request_id, error)
            outcomes.append(blamed)
        return outcomes

    def _blame(self, served: ServedModel, texts: list[str], exc: Exception) -> BaseException:
        """UnscorableText naming the texts that fail alone, if the model scores the others
        (or, for a request of one text, a canary); else `exc`: the model itself fails."""
        bad: list[int] = []
        for i, text in enumerate(texts):
            try:
                self._score(served, [text])
            except Exception:
                bad.append(i)
        if not bad:
            return exc  # fails together, not alone: not the input's fault
        if len(bad) == len(texts):
            try:
                self._score(served, [_CANARY])
            except Exception:
                return exc
        return UnscorableText(bad, exc)

    def _score(self, served: ServedModel, texts: list[str]) -> list[Scored]:
        classifier = served.classifier
        labels = classifier.labels
        # One tokenizer call for everything gathered, then forward passes of similar
        # lengths within the text and token bounds.
        encoded = classifier.encode(texts)
        passes = plan_forward_passes(
            [len(ids) for ids in encoded["input_ids"]],
            served.bounds.max_texts,
            served.bounds.max_tokens,
        )
        out: list[Scored | None] = [None] * len(texts)
        for rows in passes:
            BATCH_TEXTS.observe(len(rows))
            logits = classifier.logits_for(encoded, rows)
            probs = logits.softmax(-1)
            for i, row_logits, row_probs in zip(rows, logits.tolist(), probs.tolist(), strict=True):
                best = max(range(len(labels)), key=row_probs.__getitem__)
                out[i] = Scored(
                    label=labels[best],
                    confidence=row_probs[best],
                    scores=dict(zip(labels, row_probs, strict=True)),
                    logits=row_logits,
                    model_version=served.version,
                )
        self._beacon.mark_busy()
        return [s for s in out if s is not None]
