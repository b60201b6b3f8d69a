"""bench.variants: each faster form of the served model gives the eager model's logits and
labels, at several batch sizes and text lengths, without recompiling in steady state."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.ml.modeling import Classifier, init_classifier
from bench.variants import FastClassifier, VariantUnavailable, compiled, onnx_runtime
from tests.conftest import LABELS

# Batch sizes 1 and 4 (and 3), lengths from 3 tokens to truncated at max_length.
BATCHES = [
    ["thanks!"],
    ["@jetblue the gate changed twice and nobody told us, three hours at the airport " * 3],
    ["ok", "lost my bag again", "@united why was my flight cancelled?", "great crew " * 20],
    ["a b c d e f g", "seat", "delayed"],
]


@pytest.fixture(scope="module")
def eager(tiny_base: Path) -> Classifier:
    torch.manual_seed(0)
    model, tokenizer = init_classifier(tiny_base, LABELS)
    model.eval()
    return Classifier(model=model, tokenizer=tokenizer, labels=LABELS, max_length=32)


def assert_same_as_eager(variant: FastClassifier, eager: Classifier) -> None:
    assert variant.labels == eager.labels == LABELS
    assert variant.max_length == eager.max_length
    for texts in BATCHES:
        got, want = variant.logits(texts), eager.logits(texts)
        assert got.dtype == torch.float32 and got.device.type == "cpu"
        assert got.shape == (len(texts), len(LABELS))
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    texts = [text for batch in BATCHES for text in batch]
    assert variant.predict(texts, batch_size=4) == eager.predict(texts, batch_size=4)


@pytest.mark.parametrize(
    "exporter",
    [pytest.param("dynamo", marks=pytest.mark.slow), "torchscript"],  # dynamo: 12 s here
)
def test_onnx_runtime_matches_eager(eager: Classifier, tmp_path: Path, exporter):
    variant = onnx_runtime(eager, tmp_path, exporter=exporter)
    assert variant.exporter == exporter
    assert (tmp_path / "model.onnx").is_file()
    assert 0 < variant.export_seconds <= variant.setup_seconds
    assert (
        variant.model.session.get_session_options().intra_op_num_threads == torch.get_num_threads()
    )
    assert set(variant.model.input_names) == {"input_ids", "attention_mask", "token_type_ids"}
    assert_same_as_eager(variant, eager)


def test_onnx_runtime_unavailable_without_onnxruntime(
    eager: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(VariantUnavailable, match="onnxruntime is not installed") as info:
        onnx_runtime(eager, tmp_path)
    assert "onnxruntime" in info.value.reason


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow  # compiling the tiny model's two graphs takes 15-40 s on 2 cores
def test_compiled_matches_eager_without_recompiling(eager: Classifier, fresh_dynamo):
    variant = compiled(eager)
    assert variant.setup_seconds > 0
    # batch 1 is a graph of its own (sizes 0 and 1 are specialised); all other sizes share one
    assert 1 <= variant.warmup_graphs <= 2
    assert_same_as_eager(variant, eager)
    assert variant.graphs_since_warmup() == 0
    assert variant.tokenizer is eager.tokenizer
    # the served model itself is untouched: still the eager module
    assert not hasattr(eager.model, "_orig_mod")
