"""Small named building blocks: norms, feed-forwards, rotary and absolute positions, attention.

Everything here is plain PyTorch; ``coca.py`` composes these into the ViT, the poolers and the two
text decoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """Root-mean-square norm: x / sqrt(mean(x^2) + eps) * weight (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # weight in x's dtype so that the fused kernel also runs under autocast
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


# ------------------------------------------------------------------------------ feed-forwards


class GeluMLP(nn.Module):
    """Baseline ViT feed-forward: Linear dim->hidden, GELU, Linear hidden->dim (with biases)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.fc_in = nn.Linear(dim, hidden, bias=bias)
        self.fc_out = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc_out(F.gelu(self.fc_in(x))))


class GatedFeedForward(nn.Module):
    """Gated-linear-unit feed-forward (Shazeer 2020): two parallel Linear dim->hidden, an activation on
    one (the "gate"), their Hadamard product, Linear hidden->dim. GEGLU and SwiGLU below differ only in
    the gate's activation, so they have the same shapes and the same parameter count.

    The two parallel linears are stored as one (2*hidden, dim) matrix ``fc_in`` (rows [:hidden]: the
    gate branch, rows [hidden:]: the linear "up" branch) so they run as one matmul; this is the same
    function and the same parameter count as two separate Linear layers.
    """

    @staticmethod
    def activation(x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.hidden = hidden
        self.fc_in = nn.Linear(dim, 2 * hidden, bias=bias)
        self.fc_out = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc_in(x).split(self.hidden, dim=-1)
        return self.dropout(self.fc_out(self.activation(gate) * up))


class GEGLU(GatedFeedForward):
    """GEGLU: GELU(x W_gate) * (x W_up), then W_out (GRR-CoCa's ViT and both text decoders)."""

    activation = staticmethod(F.gelu)


class SwiGLU(GatedFeedForward):
    """SwiGLU: Swish(x W_gate) * (x W_up), then W_out, Swish = SiLU = x * sigmoid(x) (CogVLM, LLaMA)."""

    activation = staticmethod(F.silu)


# ------------------------------------------------------------------------------------ adapter


class GatedDownProjection(nn.Module):
    """CROME's gated down-projection of one modality: SiLU(x W_gate) * (x W_down), dim -> bottleneck."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.gate = nn.Linear(dim, bottleneck)
        self.down = nn.Linear(dim, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.gate(x)) * self.down(x)


class CrossModalAdapter(nn.Module):
    """CROME's gated cross-modal adapter: a bottleneck with a skip connection,

        image' = image + W_up(GatedDown_image(image)),   text' = text + W_up(GatedDown_text(text)),

    each modality with its own gated down-projection, both sharing the up-projection (bottleneck ->
    dim), so the two modalities are mapped back through one space. ``CoCa`` zero-initialises ``up``,
    so that a model with a fresh adapter computes exactly what it computed without one.
    """

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.image_down = GatedDownProjection(dim, bottleneck)
        self.text_down = GatedDownProjection(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)

    def forward(self, image_tokens: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image_tokens + self.up(self.image_down(image_tokens)), text + self.up(self.text_down(text))


# ---------------------------------------------------------------------------------- positions


def rope_frequencies(rot_dim: int, base: float, device=None) -> torch.Tensor:
    """Inverse frequencies base^(-2i/rot_dim), i = 0 .. rot_dim/2 - 1, for rot_dim rotated channels.
    (float64: the angles are computed in double precision, the tables returned in float32.)"""
    return base ** (-torch.arange(0, rot_dim, 2, device=device, dtype=torch.float64) / rot_dim)


def _rope_tables(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles (..., D/2) of the channel pairs (j, j + D/2) -> cos and signed sin tables (..., D):
    cos = [cos, cos], sin = [-sin, sin], so that ``apply_rope`` is two products and a sum."""
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1).float(), torch.cat([-sin, sin], dim=-1).float()


def rope_1d(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for integer ``positions`` (any shape S) -> cos, sin: two (*S, head_dim)."""
    angles = positions.to(torch.float64)[..., None] * rope_frequencies(head_dim, base, positions.device)
    return _rope_tables(angles)


def rope_2d(rows: torch.Tensor, cols: torch.Tensor, head_dim: int,
            base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for a patch grid (axial 2-D RoPE) -> cos, sin: two (*S, head_dim).

    Each axis rotates its own half of the head's channels with a 1-D RoPE of width head_dim/2: the
    first head_dim/4 rotation pairs follow the row index, the last head_dim/4 the column index. With
    the pairing of ``apply_rope`` (channel j pairs with j + head_dim/2) the row half is channels
    [0, hd/4) + [hd/2, 3hd/4) and the column half the rest.
    """
    freqs = rope_frequencies(head_dim // 2, base, rows.device)
    angles = torch.cat([rows.to(torch.float64)[..., None] * freqs,
                        cols.to(torch.float64)[..., None] * freqs], dim=-1)
    return _rope_tables(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs (j, j + D/2) of x (..., L, D) by the tables of ``rope_1d``/``rope_2d``:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat([x2, x1], dim=-1) * sin.to(x.dtype)


def sincos_2d_positions(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos absolute position encoding (MAE style) for a grid_size^2 patch grid.

    Returns (grid_size^2, dim): [sin(r w), cos(r w), sin(c w), cos(c w)] with dim/4 frequencies
    w_k = 1 / 10000^(k / (dim/4)); rows r and columns c in patch units, patches in row-major order.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = patch_grid(grid_size)
    r = rows.to(torch.float32)[:, None] * omega
    c = cols.to(torch.float32)[:, None] * omega
    return torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], dim=1)


def patch_grid(grid_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index of each patch, row-major: two (grid_size^2,) long tensors."""
    index = torch.arange(grid_size * grid_size, device=device)
    return index // grid_size, index % grid_size


# ---------------------------------------------------------------------------------- attention


class KVCache:
    """Keys and values seen so far by one attention layer, for incremental decoding.

    Self-attention appends each step's keys/values; cross-attention stores the projected context
    on its first call and reuses it.
    """

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat([self.k, k], dim=-2), torch.cat([self.v, v], dim=-2)
        return self.k, self.v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows ``index`` (beam search)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention``.

    Self-attention (``cross=False``) projects queries, keys and values from x with one fused
    Linear(dim, 3*dim); cross-attention projects queries from x and keys/values from ``context``.
    Optional: RoPE tables (applied to queries and keys), a boolean ``attn_mask`` (True = may attend,
    broadcastable to (B, heads, Lq, Lk)) or ``is_causal``, and a ``KVCache``.
    """

    def __init__(self, dim: int, heads: int, *, cross: bool = False, bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        self.heads, self.head_dim, self.cross = heads, dim // heads, cross
        if cross:
            self.q_proj = nn.Linear(dim, dim, bias=bias)
            self.kv_proj = nn.Linear(dim, 2 * dim, bias=bias)
        else:
            self.qkv_proj = nn.Linear(dim, 3 * dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """(B, L, n*dim) -> (n, B, heads, L, head_dim), a view (no copy: SDPA takes strides)."""
        B, L, _ = x.shape
        return x.view(B, L, n, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: KVCache | None = None) -> torch.Tensor:
        B, L, D = x.shape
        if self.cross:
            q = self._heads(self.q_proj(x), 1)[0]
            if cache is not None and cache.k is not None:
                k, v = cache.k, cache.v
            else:
                k, v = self._heads(self.kv_proj(context), 2).unbind(0)
                if cache is not None:
                    cache.update(k, v)
        else:
            qkv = self._heads(self.qkv_proj(x), 3)
            if rope is not None:  # rotate queries and keys together: (2, B, heads, L, head_dim)
                (q, k), v = apply_rope(qkv[:2], *rope).unbind(0), qkv[2]
            else:
                q, k, v = qkv.unbind(0)
            if cache is not None:
                k, v = cache.update(k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal,
            dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, L, D)
        return self.resid_dropout(self.out_proj(y))


def init_trunc_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Truncated normal N(0, std^2) cut at +-2 std."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


__all__ = [
    "RMSNorm", "GeluMLP", "GatedFeedForward", "GEGLU", "SwiGLU", "GatedDownProjection", "CrossModalAdapter", "rope_frequencies", "rope_1d", "rope_2d", "apply_rope",
    "sincos_2d_positions", "patch_grid", "KVCache", "Attention", "init_trunc_normal_",
]
