"""Synthetic inputs the benchmarks share: caption token sequences in the pipeline's one token layout."""

from __future__ import annotations

import torch

from pipeline.model.config import ModelConfig


def captions(cfg: ModelConfig, batch: int, seed: int = 0) -> torch.Tensor:
    """`batch` caption sequences of varied lengths (5 to context_length - 4 tokens), laid out by
    `TokenLayout.sequence` (BOS, tokens, EOS, PAD..., CLS, PAD): context_length + 1 ids each."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        n = int(torch.randint(5, cfg.context_length - 3, (1,), generator=g))
        ids = torch.randint(cfg.tokens.first_caption_id, cfg.bos_id, (n,), generator=g).tolist()
        rows.append(cfg.tokens.sequence(ids, cfg.context_length)[0])
    return torch.tensor(rows, dtype=torch.long)
