"""Captions in the pipeline's token format, for the model and training tests."""

from __future__ import annotations

import torch

from pipeline.model.config import ModelConfig


def make_sequences(cfg: ModelConfig, caption_lengths: list[int], length: int | None = None,
                   seed: int = 0) -> torch.Tensor:
    """Caption sequences ``BOS, caption, EOS, PAD..., CLS, PAD`` of ``length`` tokens
    (default context_length + 1); caption tokens are random non-special ids."""
    length = cfg.context_length + 1 if length is None else length
    g = torch.Generator().manual_seed(seed)
    seq = torch.full((len(caption_lengths), length), cfg.pad_id, dtype=torch.long)
    for row, n in enumerate(caption_lengths):
        assert n + 4 <= length, "caption does not fit"
        seq[row, 0] = cfg.bos_id
        seq[row, 1:n + 1] = torch.randint(3, min(cfg.bos_id, cfg.cls_id), (n,), generator=g)
        seq[row, n + 1] = cfg.eos_id
        seq[row, -2] = cfg.cls_id
    return seq
