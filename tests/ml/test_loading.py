"""Model loads in a process that loads from more than one thread (the API's hot-swap
loader, a worker's pre-training beside it)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
)
from transformers import initialization as hf_init

from app.ml.modeling import load_pretrained


@pytest.fixture
def classifier_folder(tiny_base: Path, tmp_path: Path) -> Path:
    """A saved classifier: no masked-LM head, so loading it as a masked-LM model makes
    one whose decoder bias exists only once tied to the head's bias."""
    folder = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_pretrained(
        str(tiny_base), num_labels=3
    ).save_pretrained(str(folder))
    return folder


@pytest.fixture
def tying_restored():
    """Whatever a failing run of these tests does to transformers, later tests get tying."""
    original = PreTrainedModel.tie_weights
    yield
    PreTrainedModel.tie_weights = original  # type: ignore[method-assign]


def test_loads_in_two_threads_keep_weight_tying(
    classifier_folder: Path, monkeypatch: pytest.MonkeyPatch, tying_restored
) -> None:
    original_tie = PreTrainedModel.tie_weights
    real_no_tie = hf_init.no_tie_weights

    # Widen the window in which a load has switched tying off, so two unserialised loads
    # overlap on every run rather than now and then.
    @contextmanager
    def slow_no_tie():
        with real_no_tie():
            time.sleep(0.05)
            yield

    monkeypatch.setattr(hf_init, "no_tie_weights", slow_no_tie)
    heads, errors = [], []

    def load_some() -> None:
        try:
            for _ in range(3):
                heads.append(load_pretrained(AutoModelForMaskedLM, classifier_folder).cls)
        except Exception as error:  # noqa: BLE001 - the test reports it below
            errors.append(error)

    threads = [threading.Thread(target=load_some) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert PreTrainedModel.tie_weights is original_tie
    assert len(heads) == 6
    for head in heads:
        assert head.predictions.decoder.bias is head.predictions.bias
        assert head.predictions.decoder.bias.device.type == "cpu"


def test_a_load_that_leaves_weights_on_meta_is_refused(
    classifier_folder: Path, monkeypatch: pytest.MonkeyPatch, tying_restored
) -> None:
    # What an unserialised load elsewhere in the process leaves behind: tying off for good.
    monkeypatch.setattr(PreTrainedModel, "tie_weights", lambda self, *a, **k: None)
    with pytest.raises(RuntimeError, match="unmaterialised.*decoder"):
        load_pretrained(AutoModelForMaskedLM, classifier_folder)
