"""Validation over a whole split (docs/paper.md §Losses and metrics), averaged across processes.

Every process evaluates its share of the split (pipeline.data.loader.ValLoader: each sample once);
the sums below are then added over processes, so the result does not depend on how many there are:

    caption loss     = sum of per-token cross-entropies / number of caption tokens   (whole split)
    perplexity       = exp(caption loss)
    contrastive loss = per-sample mean of paper Eq. 1 (or of the sigmoid loss: the training objective's
                       CoCaLoss.contrastive_term) computed within each validation batch of
                       train.val_batch_size consecutive samples of one shard (the last batch of a
                       shard is smaller), without gathering across processes
    CoCa loss        = CoCaLoss.combine(contrastive, caption): the phase's weights, as in training

The joint fine-tune validates on each of its sets and reports the plain mean of each metric over the
sets (each set counts once, whatever its size or its sampling weight: the model is meant to do well
on every one; early stopping follows that mean) beside each set's own as `<dataset>/<metric>`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.data.loader import ValLoader
from pipeline.model.losses import CoCaLoss, caption_loss_sum

from .parallelize import all_reduce_sum
from .resume import NonFiniteLoss


@torch.no_grad()
def validate(model: nn.Module, loader: ValLoader, loss_fn: CoCaLoss, device: torch.device,
             amp) -> dict[str, float]:
    """`model` is the bare CoCa (not DDP-wrapped); every process must call this."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # con * n, n, caption CE sum, tokens
    for batch in loader:
        batch = batch.to(device)
        with amp:
            out = model(batch.images, batch.text)
        con = loss_fn.contrastive_term(out["image_embed"], out["text_embed"], out)
        cap_sum, tokens = caption_loss_sum(out["logits"], batch.targets, loss_fn.ignore_ids)
        n = torch.tensor(len(batch), device=device, dtype=torch.float64)
        sums += torch.stack([con.double() * n, n, cap_sum.double(), tokens.double()])
    model.train(was_training)
    con_n, n, cap_sum, tokens, corrupt = all_reduce_sum([*sums.tolist(), loader.corrupt], device)
    if n == 0 or tokens == 0:
        raise RuntimeError(f"{loader.manifest.root}: validation found no usable sample")
    con, cap = con_n / n, cap_sum / tokens
    if not (math.isfinite(con) and math.isfinite(cap)):  # the same on every process: all stop together
        raise NonFiniteLoss(f"validation on {loader.manifest.root}: non-finite loss (caption {cap}, contrastive "
                            f"{con}): the model diverged; training stops and keeps its last good checkpoint")
    return {"coca_loss": loss_fn.combine(con, cap), "caption_loss": cap, "perplexity": math.exp(cap),
            "contrastive_loss": con, "samples": int(n), "corrupt_samples": int(corrupt)}


def mean_over_sets(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """One validation per dataset -> the mean of each loss over the datasets, plus each one's own."""
    losses = ("coca_loss", "caption_loss", "perplexity", "contrastive_loss")
    mean = {k: sum(r[k] for r in results.values()) / len(results) for k in losses}
    counts = {k: sum(r[k] for r in results.values()) for k in ("samples", "corrupt_samples")}
    return {**mean, **counts, **{f"{name}/{k}": r[k] for name, r in results.items() for k in losses}}
