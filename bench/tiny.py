"""A tiny randomly initialised BERT with the real tokenizer: for tests and `bench --quick`."""

from __future__ import annotations

from pathlib import Path


def build_tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with the real WordPiece tokenizer, randomly initialised."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from app.core.config import packaged_base_model

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_base_model()))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def build_tiny_mpnet(folder: Path) -> Path:
    """A 3-layer, 48-wide MPNet (the stronger teacher's architecture, another than the
    student's) with the same WordPiece tokenizer, randomly initialised."""
    import torch
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    from app.core.config import packaged_base_model

    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_base_model()))
    config = MPNetConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=96,
        max_position_embeddings=130,
        pad_token_id=tokenizer.pad_token_id,
    )
    MPNetModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
