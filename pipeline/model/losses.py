"""CoCa losses (SPEC "Losses and metrics").

    L_con = CE(logit_scale * x y^T, diag) + CE(logit_scale * y x^T, diag)   (paper Eq. 1: the SUM of
            the two directional mean cross-entropies; x, y L2-normalised image / text embeddings)
    L_cap = token cross-entropy averaged over the targets that are not BOS, PAD or CLS
    perplexity = exp(L_cap);  CoCa loss = lambda_con * L_con + lambda_cap * L_cap
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def contrastive_loss(image_embed: torch.Tensor, text_embed: torch.Tensor,
                     logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE of paper Eq. 1 on (N, D) normalised embeddings; pair i matches pair i."""
    logits = logit_scale * image_embed @ text_embed.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor,
                 ignore_ids: tuple[int, ...]) -> torch.Tensor:
    """Mean per-token cross-entropy of logits (B, L, V) against targets (B, L), ignoring the
    targets whose id is in ``ignore_ids`` (BOS, PAD, CLS). Computed in (at least) float32."""
    ignore = torch.zeros_like(targets, dtype=torch.bool)
    for token in ignore_ids:
        ignore |= targets == token
    targets = targets.masked_fill(ignore, -100)
    token_loss = F.cross_entropy(_at_least_float32(logits.reshape(-1, logits.shape[-1])), targets.reshape(-1),
                                 ignore_index=-100, reduction="sum")
    return token_loss / (~ignore).sum().clamp(min=1)


def perplexity(caption_loss_value: torch.Tensor) -> torch.Tensor:
    """exp(mean per-token caption loss)."""
    return caption_loss_value.detach().exp()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 that passes gradients back: each rank gets the sum over ranks of the
    gradients for its own rows (all_reduce, then take this rank's slice; works on every backend)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None


def gather_with_grad(tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) from all ranks in rank order, with grads."""
    if world_size == 1:
        return tensor
    return _GatherWithGrad.apply(tensor, rank, world_size)


class CoCaLoss(nn.Module):
    """lambda_con * contrastive + lambda_cap * caption, from the dict that ``CoCa.forward`` returns.

    With world_size > 1 (torch.distributed initialised) the image and text embeddings of all ranks
    are gathered with gradients and every rank computes the contrastive loss of the whole global
    batch, so the loss equals the one-process loss on the concatenated batch; the gather's backward
    sums each rank's gradient, and DDP's gradient averaging over ranks then gives exactly the
    one-process gradient. The caption loss is the per-token mean of the local batch (DDP averages it
    over ranks). Every rank must have the same local batch size.
    """

    def __init__(self, contrastive_weight: float = 1.0, caption_weight: float = 1.0, *,
                 pad_id: int, bos_id: int, cls_id: int, rank: int = 0, world_size: int = 1):
        super().__init__()
        if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise ValueError(f"world_size={world_size} needs torch.distributed initialised")
        self.contrastive_weight, self.caption_weight = contrastive_weight, caption_weight
        self.ignore_ids = (bos_id, pad_id, cls_id)
        self.rank, self.world_size = rank, world_size

    @classmethod
    def from_config(cls, cfg, contrastive_weight: float, caption_weight: float, *, rank: int = 0,
                    world_size: int = 1) -> "CoCaLoss":
        """Build with the special token ids of a ``ModelConfig``."""
        return cls(contrastive_weight, caption_weight, pad_id=cfg.pad_id, bos_id=cfg.bos_id,
                   cls_id=cfg.cls_id, rank=rank, world_size=world_size)

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        image_embed = gather_with_grad(outputs["image_embed"], self.rank, self.world_size)
        text_embed = gather_with_grad(outputs["text_embed"], self.rank, self.world_size)
        con = contrastive_loss(_at_least_float32(image_embed), _at_least_float32(text_embed),
                               _at_least_float32(outputs["logit_scale"]))
        cap = caption_loss(outputs["logits"], targets, self.ignore_ids)
        return {
            "coca_loss": self.contrastive_weight * con + self.caption_weight * cap,
            "contrastive_loss": con,
            "caption_loss": cap,
            "perplexity": perplexity(cap),
        }
