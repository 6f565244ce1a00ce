"""CoCa losses (docs/paper.md §Losses and metrics).

    L_con = CE(logit_scale * x y^T, diag) + CE(logit_scale * y x^T, diag)   (paper Eq. 1: the SUM of
            the two directional mean cross-entropies; x, y L2-normalised image / text embeddings)
    or, with train.contrastive_loss: sigmoid (SigLIP, Zhai et al. 2023),
    L_con = -(1/N) sum_ij log sigmoid(z_ij (logit_scale * x_i.y_j + logit_bias)), z_ij = 1 if i = j
            else -1: every pair of the batch is its own binary match / no-match decision
    L_cap = token cross-entropy averaged over the targets that are not BOS, PAD or CLS
    perplexity = exp(L_cap);  CoCa loss = lambda_con * L_con + lambda_cap * L_cap

`CoCaLoss` is the objective that training backpropagates, and `CoCaLoss.combine` the CoCa loss that
training logs and validation reports: editing them changes what trains and what is measured.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.tokens import TokenLayout


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def contrastive_loss(image_embed: torch.Tensor, text_embed: torch.Tensor,
                     logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE of paper Eq. 1 on (N, D) normalised embeddings; pair i matches pair i."""
    logits = logit_scale * image_embed @ text_embed.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)


def sigmoid_contrastive_loss(image_embed: torch.Tensor, text_embed: torch.Tensor,
                             logit_scale: torch.Tensor | float, logit_bias: torch.Tensor | float) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss on (N, D) normalised embeddings; pair i matches pair i: the
    N^2 pairs' binary log-likelihoods summed, divided by N (SigLIP's normalisation)."""
    logits = logit_scale * image_embed @ text_embed.t() + logit_bias
    signs = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]


def target_mask(targets: torch.Tensor, ignore_ids: tuple[int, ...]) -> torch.Tensor:
    """True where a target counts in the caption loss (its id is not in ``ignore_ids``)."""
    return ~torch.isin(targets, torch.tensor(ignore_ids, device=targets.device))


def caption_loss_sum(logits: torch.Tensor, targets: torch.Tensor,
                     ignore_ids: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed per-token cross-entropy, number of counted targets) of logits (B, L, V) against
    targets (B, L), ignoring the targets whose id is in ``ignore_ids`` (BOS, PAD, CLS). Computed in
    (at least) float32."""
    counted = target_mask(targets, ignore_ids)
    targets = targets.masked_fill(~counted, -100)
    token_loss = F.cross_entropy(_at_least_float32(logits.reshape(-1, logits.shape[-1])), targets.reshape(-1),
                                 ignore_index=-100, reduction="sum")
    return token_loss, counted.sum()


def caption_loss(logits: torch.Tensor, targets: torch.Tensor,
                 ignore_ids: tuple[int, ...]) -> torch.Tensor:
    """Mean per-token cross-entropy over the counted targets (see caption_loss_sum)."""
    total, count = caption_loss_sum(logits, targets, ignore_ids)
    return total / count.clamp(min=1)


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
    """The CoCa objective from the dict that ``CoCa.forward`` returns, exact across processes.

    Contrastive term (softmax or sigmoid, `contrastive`): the image and text embeddings of all processes
    are gathered with gradients and every process computes L_con over the whole global batch; the gather's backward sums each
    process's gradient and DDP's averaging over processes then gives exactly the one-process gradient.

    Caption term: the mean over the global batch's caption tokens. Each process holds a share of them
    (its summed cross-entropy / the global token count); DDP averages gradients over processes, so
    each process backpropagates world_size x its share. The global token count is all-reduced here,
    unless the caller passes it (the trainer all-reduces every micro-step's count at once).

    ``forward`` returns ``loss`` (what to backpropagate), and detached ``contrastive_loss`` (the
    global value, the same on every process), ``caption_share`` (this process's share of the global
    mean caption loss: the shares sum to it over processes) and ``caption_tokens`` (this process's).
    """

    def __init__(self, lambda_con: float, lambda_cap: float, tokens: TokenLayout, *,
                 rank: int = 0, world_size: int = 1, contrastive: str = "softmax"):
        super().__init__()
        if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise ValueError(f"world_size={world_size} needs torch.distributed initialised")
        if contrastive not in ("softmax", "sigmoid"):
            raise ValueError(f"contrastive {contrastive!r}: expected softmax or sigmoid")
        self.lambda_con, self.lambda_cap, self.contrastive = lambda_con, lambda_cap, contrastive
        self.ignore_ids = tokens.non_targets
        self.rank, self.world_size = rank, world_size

    def combine(self, contrastive: torch.Tensor | float, caption: torch.Tensor | float) -> torch.Tensor | float:
        """CoCa loss = lambda_con * L_con + lambda_cap * L_cap."""
        return self.lambda_con * contrastive + self.lambda_cap * caption

    def contrastive_term(self, image_embed: torch.Tensor, text_embed: torch.Tensor,
                         outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """L_con of these embeddings (in at least float32) with the model's scale (and bias) from
        `outputs`: the softmax or the sigmoid loss, as this objective was built."""
        scale = _at_least_float32(outputs["logit_scale"])
        image_embed, text_embed = _at_least_float32(image_embed), _at_least_float32(text_embed)
        if self.contrastive == "softmax":
            return contrastive_loss(image_embed, text_embed, scale)
        if "logit_bias" not in outputs:
            raise ValueError("the sigmoid contrastive loss needs a model built with contrastive_loss='sigmoid' "
                             "(its outputs have no logit_bias)")
        return sigmoid_contrastive_loss(image_embed, text_embed, scale, _at_least_float32(outputs["logit_bias"]))

    def count_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Caption-loss targets in a batch (not BOS, PAD or CLS)."""
        return target_mask(targets, self.ignore_ids).sum()

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor,
                global_tokens: float | None = None) -> dict[str, torch.Tensor]:
        image_embed = gather_with_grad(outputs["image_embed"], self.rank, self.world_size)
        text_embed = gather_with_grad(outputs["text_embed"], self.rank, self.world_size)
        con = self.contrastive_term(image_embed, text_embed, outputs)
        cap_sum, tokens = caption_loss_sum(outputs["logits"], targets, self.ignore_ids)
        if global_tokens is None:
            global_tokens = tokens.detach().double()
            if self.world_size > 1:
                dist.all_reduce(global_tokens)
        share = cap_sum / max(float(global_tokens), 1.0)
        return {
            "loss": self.combine(con, share * self.world_size),
            "contrastive_loss": con.detach(),
            "caption_share": share.detach(),
            "caption_tokens": tokens,
        }
