"""Validation over a whole split (SPEC "Losses and metrics"), averaged across processes.

Every process evaluates its share of the split (pipeline.data.loader.ValLoader: each sample once);
the sums below are then added over processes, so the result does not depend on how many there are:

    caption loss     = sum of per-token cross-entropies / number of caption tokens   (whole split)
    perplexity       = exp(caption loss)
    contrastive loss = per-sample mean of paper Eq. 1 computed within each validation batch of
                       train.val_batch_size consecutive samples of one shard (the last batch of a
                       shard is smaller), without gathering across processes
    CoCa loss        = lambda_con * contrastive + lambda_cap * caption   (the phase's weights)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.data.loader import ValLoader
from pipeline.model import ModelConfig, caption_loss, contrastive_loss

from .config import PhaseConfig
from .parallelize import all_reduce_sum


def caption_token_count(targets: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Targets that count in the caption loss (not BOS, PAD or CLS)."""
    ignored = (targets == cfg.bos_id) | (targets == cfg.pad_id) | (targets == cfg.cls_id)
    return (~ignored).sum()


@torch.no_grad()
def validate(model: nn.Module, loader: ValLoader, phase: PhaseConfig, model_cfg: ModelConfig,
             device: torch.device, amp) -> dict[str, float]:
    """`model` is the bare CoCa (not DDP-wrapped); every process must call this."""
    was_training = model.training
    model.eval()
    ignore = (model_cfg.bos_id, model_cfg.pad_id, model_cfg.cls_id)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # con * n, n, cap * tokens, tokens
    for batch in loader:
        batch = batch.to(device)
        with amp:
            out = model(batch.images, batch.text)
        con = contrastive_loss(out["image_embed"].float(), out["text_embed"].float(), out["logit_scale"].float())
        cap = caption_loss(out["logits"], batch.targets, ignore)
        tokens = caption_token_count(batch.targets, model_cfg)
        sums += torch.stack([con.double() * len(batch), torch.tensor(len(batch), device=device, dtype=torch.float64),
                             cap.double() * tokens, tokens.double()])
    model.train(was_training)
    con_n, n, cap_t, tokens, corrupt = all_reduce_sum([*sums.tolist(), loader.corrupt], device)
    if n == 0 or tokens == 0:
        raise RuntimeError(f"{loader.manifest.root}: validation found no usable sample")
    con, cap = con_n / n, cap_t / tokens
    return {"coca_loss": phase.lambda_con * con + phase.lambda_cap * cap, "caption_loss": cap,
            "perplexity": math.exp(cap), "contrastive_loss": con, "samples": int(n),
            "corrupt_samples": int(corrupt)}
