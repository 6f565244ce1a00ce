"""CoCa (Contrastive Captioner): Baseline CoCa and GRR-CoCa.

    images -> VisionTransformer -> 256 patch embeddings
           -> AttentionalPooler (generative, 64 queries) -> 64 image tokens  (cross-attention context)
              -> AttentionalPooler (contrastive, 1 query) -> image embedding (contrastive loss)
    (a cascade: the contrastive pooler reads the generative pooler's 64 outputs, not the patches)
    text   -> UnimodalTextDecoder (causal)               -> hidden states; output at CLS = text embedding
           -> MultimodalTextDecoder (causal + cross-attn) -> vocabulary logits (captioning loss)

The two variants differ only in the ViT (``ModelConfig.encoder``, the paper's two bundles):
    baseline: pre-norm LayerNorm, GELU MLP (mlp_ratio), fixed 2-D sin-cos positions added once;
    grr:      pre-norm RMSNorm, GEGLU (geglu_ratio), 2-D RoPE on queries and keys in every layer.
Each of the three choices is also a switch of its own (``model.vit.norm/ffn/pos``; ``learned``
positions and CogVLM's ``swiglu`` feed-forward as further options), for ablations.
Both text decoders use RMSNorm, GEGLU and 1-D RoPE in both variants (``model.text.ffn`` swaps the
GEGLU for SwiGLU or a GELU MLP, for ablations).

Layout (open_clip's CoCa layout, docs/paper.md §Parameter accounting): poolers have learned queries,
LayerNorms on queries and keys and biased attention; each multimodal layer is a self-attention block
with its own feed-forward followed by a cross-attention block with its own feed-forward and a norm on
the cross-attention context; the vocabulary head is untied and has a bias. There is no final ViT
norm (the poolers normalise their keys) and no image/text projection: the embeddings are the
contrastive pooler's output and the unimodal decoder's (RMS-normed) CLS output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CONTRASTIVE_LOSSES, MODEL_PARTS, ModelConfig
from .layers import (GEGLU, Attention, CrossModalAdapter, GeluMLP, KVCache, RMSNorm, SwiGLU, init_trunc_normal_,
                     patch_grid, rope_1d, rope_2d, sincos_2d_positions)

Rope = tuple[torch.Tensor, torch.Tensor]
LOGIT_SCALE_MAX = math.log(100)  # CLIP's cap on the contrastive temperature's inverse


# ------------------------------------------------------------------------------------ blocks


class TransformerBlock(nn.Module):
    """Pre-norm self-attention block: x + attn(norm(x)), then x + ff(norm(x))."""

    def __init__(self, dim: int, heads: int, norm: type[nn.Module], ff: nn.Module, dropout: float):
        super().__init__()
        self.norm_attn = norm(dim)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.norm_ff = norm(dim)
        self.ff = ff

    def forward(self, x: torch.Tensor, *, rope: Rope | None = None,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), rope=rope, attn_mask=attn_mask, is_causal=is_causal,
                          cache=cache)
        return x + self.ff(self.norm_ff(x))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention block (text queries, image context), then its own feed-forward."""

    def __init__(self, dim: int, heads: int, ff: nn.Module, dropout: float):
        super().__init__()
        self.norm_attn = RMSNorm(dim)
        self.norm_context = RMSNorm(dim)
        self.attn = Attention(dim, heads, cross=True, dropout=dropout)
        self.norm_ff = RMSNorm(dim)
        self.ff = ff

    def forward(self, x: torch.Tensor, context: torch.Tensor, *,
                cache: KVCache | None = None) -> torch.Tensor:
        # With a filled cache the context's keys/values are reused and the context is not read.
        ctx = None if cache is not None and cache.k is not None else self.norm_context(context)
        x = x + self.attn(self.norm_attn(x), ctx, cache=cache)
        return x + self.ff(self.norm_ff(x))


def feed_forward(kind: str, cfg: ModelConfig, dropout: float, bias: bool) -> nn.Module:
    """One feed-forward of `kind` (gelu | geglu | swiglu): a GELU MLP of width mlp_hidden, or a gated
    one (GEGLU, SwiGLU) of width geglu_hidden: the one hidden-width rule for ViT and text alike."""
    if kind == "gelu":
        return GeluMLP(cfg.dim, cfg.mlp_hidden, dropout, bias=bias)
    gated = {"geglu": GEGLU, "swiglu": SwiGLU}[kind]
    return gated(cfg.dim, cfg.geglu_hidden, dropout, bias=bias)


def text_feed_forward(cfg: ModelConfig, dropout: float) -> nn.Module:
    """The text decoders' feed-forward (`model.text.ffn`; without biases, unlike the ViT's)."""
    return feed_forward(cfg.text.ffn, cfg, dropout, bias=cfg.text_geglu_bias)


# ------------------------------------------------------------------------------ image encoder


class VisionTransformer(nn.Module):
    """ViT over (image_size / patch_size)^2 patches; returns all patch embeddings (B, N, dim)."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        norm_kind, ffn_kind, self.pos_kind = cfg.vit_design
        self.patch_embed = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        if self.pos_kind == "sincos":
            # Fixed (non-trainable) absolute positions, added once to the patch embeddings.
            self.register_buffer("pos_embed", sincos_2d_positions(cfg.grid_size, cfg.dim),
                                 persistent=False)
        elif self.pos_kind == "learned":
            # Trained absolute positions, added once (initialised in CoCa._init_weights).
            self.pos_embed = nn.Parameter(torch.zeros(cfg.num_patches, cfg.dim))
        else:
            # 2-D RoPE tables for the fixed patch grid, applied to q and k in every layer.
            rope_cos, rope_sin = rope_2d(*patch_grid(cfg.grid_size), cfg.head_dim, cfg.rope_base)
            self.register_buffer("rope_cos", rope_cos, persistent=False)
            self.register_buffer("rope_sin", rope_sin, persistent=False)
        norm = nn.LayerNorm if norm_kind == "layernorm" else RMSNorm
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.dim, cfg.heads, norm, feed_forward(ffn_kind, cfg, dropout, bias=True), dropout)
            for _ in range(cfg.vit_layers))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (B, dim, grid, grid) -> (B, N, dim), patches in row-major order; contiguous, or every
        # later op of the residual stream would run on a transposed (slow) memory layout
        x = self.patch_embed(images).flatten(2).transpose(1, 2).contiguous()
        rope = None
        if self.pos_kind == "rope2d":
            rope = (self.rope_cos, self.rope_sin)
        else:
            x = x + self.pos_embed.to(x.dtype)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, rope=rope)
        return x


class AttentionalPooler(nn.Module):
    """Learned queries cross-attending to a sequence: (B, N, dim) -> (B, num_queries, dim)."""

    def __init__(self, dim: int, heads: int, num_queries: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(num_queries, dim))
        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, cross=True)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        q = self.norm_query(self.query).expand(context.shape[0], -1, -1)
        return self.attn(q, self.norm_context(context))


# ------------------------------------------------------------------------------ text decoders


class UnimodalTextDecoder(nn.Module):
    """Causal text decoder over token ids; returns the hidden states (B, L, dim).

    ``final_norm`` is applied by CoCa to the output at the CLS position (the text embedding).
    """

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.dim, cfg.heads, RMSNorm, text_feed_forward(cfg, dropout), dropout)
            for _ in range(cfg.unimodal_layers))
        self.final_norm = RMSNorm(cfg.dim)

    def forward(self, tokens: torch.Tensor, *, rope: Rope, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False, caches: list[KVCache] | None = None) -> torch.Tensor:
        x = self.dropout(self.token_embedding(tokens))
        for i, block in enumerate(self.blocks):
            x = block(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal,
                      cache=None if caches is None else caches[i])
        return x


class MultimodalLayer(nn.Module):
    """One multimodal decoder layer: causal self-attention block, then cross-attention block."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        self.self_block = TransformerBlock(cfg.dim, cfg.heads, RMSNorm, text_feed_forward(cfg, dropout),
                                           dropout)
        self.cross_block = CrossAttentionBlock(cfg.dim, cfg.heads, text_feed_forward(cfg, dropout),
                                               dropout)

    def forward(self, x: torch.Tensor, image_tokens: torch.Tensor, *, rope: Rope,
                attn_mask: torch.Tensor | None, is_causal: bool,
                caches: tuple[KVCache, KVCache] | None = None) -> torch.Tensor:
        self_cache, cross_cache = caches if caches is not None else (None, None)
        x = self.self_block(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal,
                            cache=self_cache)
        return self.cross_block(x, image_tokens, cache=cross_cache)


class MultimodalTextDecoder(nn.Module):
    """Unimodal hidden states + pooled image tokens -> next-token logits (B, L, vocab_size)."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(MultimodalLayer(cfg, dropout) for _ in range(cfg.multimodal_layers))
        self.final_norm = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=True)  # untied from the embedding

    def forward(self, x: torch.Tensor, image_tokens: torch.Tensor, *, rope: Rope,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                caches: list[tuple[KVCache, KVCache]] | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, image_tokens, rope=rope, attn_mask=attn_mask, is_causal=is_causal,
                      caches=None if caches is None else caches[i])
        return self.head(self.final_norm(x))


# --------------------------------------------------------------------------------------- CoCa


class CoCa(nn.Module):
    """Baseline CoCa or GRR-CoCa (``cfg.encoder``).

    ``forward(images, text)`` takes images (B, 3, H, W) and input tokens (B, context_length) — the
    caption sequence without its last token, so the last input token is CLS — and returns a dict:
    ``image_embed`` and ``text_embed`` (B, dim, L2-normalised), ``logits`` (B, L, vocab_size; position
    t predicts target t, i.e. input t+1) and ``logit_scale`` (scalar, exp of the learnable
    log-temperature, at most 100); with ``contrastive_loss="sigmoid"`` also ``logit_bias`` (scalar,
    SigLIP's learnable bias).

    Naming (open_clip differs): ``image_embed`` is the pooled contrastive vector; the 64 pooled
    image tokens that the multimodal decoder reads are ``image_tokens`` (open_clip's image_embs).
    ``dropout`` belongs to the training phase, not to the architecture (docs/paper.md §Training).
    """

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0, *, contrastive_loss: str = "softmax",
                 adapter: bool = False):
        super().__init__()
        if contrastive_loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"contrastive_loss {contrastive_loss!r}: expected one of {', '.join(CONTRASTIVE_LOSSES)}")
        self.cfg, self.contrastive_loss = cfg, contrastive_loss
        self.visual = VisionTransformer(cfg, dropout)
        self.generative_pooler = AttentionalPooler(cfg.dim, cfg.heads, cfg.pooler_queries)
        self.contrastive_pooler = AttentionalPooler(cfg.dim, cfg.heads, 1)
        self.unimodal = UnimodalTextDecoder(cfg, dropout)
        self.multimodal = MultimodalTextDecoder(cfg, dropout)
        if contrastive_loss == "softmax":
            # Learnable temperature, stored as log(1/sigma); CLIP init 1/0.07, at most 100.
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            self.logit_bias = None
        else:
            # SigLIP's pairwise sigmoid loss also learns a bias on the logits; SigLIP's init: scale 10,
            # bias -10 (most pairs are negatives, so every pair starts out judged "no match").
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        # CROME's gated cross-modal adapter on the multimodal decoder's two inputs (adapter fine-tuning)
        self.adapter = CrossModalAdapter(cfg.dim, cfg.adapter_dim) if adapter else None
        self._init_weights()

    @property
    def options(self) -> dict:
        """How this model was built beyond its ModelConfig (the training setup's parts of it): what a
        checkpoint records so that `CoCa(cfg, **options)` rebuilds the same modules."""
        return {"contrastive_loss": self.contrastive_loss, "adapter": self.adapter is not None}

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep the stored log-temperature at or below ln(100), in place: the trainer calls this after
        every optimiser step. (Clamping only inside forward would leave the parameter above the cap
        with a gradient of exactly 0, and it would never come back.)"""
        self.logit_scale.clamp_(max=LOGIT_SCALE_MAX)

    def _init_weights(self) -> None:
        """GPT-2 / nanoGPT-style initialisation, which trains stably with pre-norm transformers:
        every Linear, Conv2d and Embedding weight and the pooler queries ~ truncated N(0, 0.02^2);
        biases zero; norms at identity (weight 1, bias 0). Each residual branch's output projection
        (attention ``out_proj``, feed-forward ``fc_out``) is scaled by 1/sqrt(2 * blocks on its
        residual stream) so the stream's variance does not grow with depth: the ViT stream has
        vit_layers blocks, the text stream (unimodal then multimodal) unimodal_layers +
        2 * multimodal_layers blocks."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                init_trunc_normal_(module.weight, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for pooler in (self.generative_pooler, self.contrastive_pooler):
            init_trunc_normal_(pooler.query, std)
        if isinstance(getattr(self.visual, "pos_embed", None), nn.Parameter):
            init_trunc_normal_(self.visual.pos_embed, std)  # learned positions (not in the paper's bundles)
        text_blocks = list(self.unimodal.blocks)
        for layer in self.multimodal.layers:
            text_blocks += [layer.self_block, layer.cross_block]
        for blocks in (list(self.visual.blocks), text_blocks):
            residual_std = std / math.sqrt(2 * len(blocks))
            for block in blocks:
                init_trunc_normal_(block.attn.out_proj.weight, residual_std)
                init_trunc_normal_(block.ff.fc_out.weight, residual_std)
        if self.adapter is not None:  # a fresh adapter is the identity: the model starts as the pre-trained one
            nn.init.zeros_(self.adapter.up.weight)
            nn.init.zeros_(self.adapter.up.bias)

    # ------------------------------------------------------------------ image side
    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (image embedding (B, dim), not normalised; pooled image tokens (B, pooler_queries, dim))."""
        image_tokens = self.generative_pooler(self.visual(images))
        image_embed = self.contrastive_pooler(image_tokens)[:, 0]
        return image_embed, image_tokens

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        embed = self.image_features(images)[0]
        return F.normalize(embed, dim=-1) if normalize else embed

    # ------------------------------------------------------------------ text side
    def text_attention(self, text: torch.Tensor) -> tuple[Rope, torch.Tensor | None, bool]:
        """RoPE tables, attention mask and is_causal flag shared by both text decoders.

        RoPE positions count only non-PAD tokens (so CLS sits right after EOS whatever the padding);
        PAD tokens are masked as keys (a PAD query still sees itself, so no row is empty). Without
        PAD in the batch the mask is plain causal and SDPA's ``is_causal`` is used.
        """
        keep = text != self.cfg.pad_id
        rope = rope_1d((keep.cumsum(dim=1) - 1).clamp(min=0), self.cfg.head_dim, self.cfg.rope_base)
        rope = (rope[0].unsqueeze(1), rope[1].unsqueeze(1))  # (B, 1, L, head_dim): shared by all heads
        # (Under torch.compile the mask is always built: a data-dependent branch would break the graph.)
        if not torch.compiler.is_compiling() and bool(keep.all()):
            return rope, None, True
        L = text.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=text.device).tril()
        diagonal = torch.eye(L, dtype=torch.bool, device=text.device)
        mask = causal & (keep[:, None, None, :] | diagonal)  # (B, 1, L, L)
        return rope, mask, False

    def text_features(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                         tuple[Rope, torch.Tensor | None, bool]]:
        """-> (text embedding (B, dim), not normalised: RMS-normed unimodal output at the last
        position (CLS); unimodal hidden states (B, L, dim); the decoders' attention setup)."""
        attention = self.text_attention(text)
        rope, mask, is_causal = attention
        hidden = self.unimodal(text, rope=rope, attn_mask=mask, is_causal=is_causal)
        text_embed = self.unimodal.final_norm(hidden[:, -1])
        return text_embed, hidden, attention

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text embeddings of input tokens (B, context_length) that end with CLS (pipeline/tokens.py)."""
        if text.ndim != 2 or bool((text[:, -1] != self.cfg.cls_id).any()):
            rows = [] if text.ndim != 2 else (text[:, -1] != self.cfg.cls_id).nonzero().flatten().tolist()
            raise ValueError(f"encode_text needs input tokens (B, L) whose last token is CLS (id {self.cfg.cls_id}): "
                             f"the caption sequence without its final PAD; rows {rows[:10]} of shape "
                             f"{tuple(text.shape)} do not end with CLS")
        embed = self.text_features(text)[0]
        return F.normalize(embed, dim=-1) if normalize else embed

    # ------------------------------------------------------------------ both
    def caption_logits(self, hidden: torch.Tensor, image_tokens: torch.Tensor, *, rope: Rope,
                       attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                       caches: list[tuple[KVCache, KVCache]] | None = None) -> torch.Tensor:
        """The multimodal decoder on unimodal hidden states and pooled image tokens, both passed through
        the adapter first when there is one (training, validation and generation alike)."""
        if self.adapter is not None:
            image_tokens, hidden = self.adapter(image_tokens, hidden)
        return self.multimodal(hidden, image_tokens, rope=rope, attn_mask=attn_mask, is_causal=is_causal,
                               caches=caches)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        image_embed, image_tokens = self.image_features(images)
        text_embed, hidden, (rope, mask, is_causal) = self.text_features(text)
        logits = self.caption_logits(hidden, image_tokens, rope=rope, attn_mask=mask, is_causal=is_causal)
        out = {
            "image_embed": F.normalize(image_embed, dim=-1),
            "text_embed": F.normalize(text_embed, dim=-1),
            "logits": logits,
            "logit_scale": self._capped_logit_scale().exp(),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out

    def _capped_logit_scale(self) -> torch.Tensor:
        """min(logit_scale, ln 100) with the gradient passing AT the cap. clamp_logit_scale_ leaves the
        parameter exactly at the cap, and torch >= 2.14's clamp gives 0 gradient there (2.13 gave 1):
        with clamp the temperature, once capped, could never move again."""
        scale = self.logit_scale
        return torch.where(scale > LOGIT_SCALE_MAX, scale.new_tensor(LOGIT_SCALE_MAX), scale)

    # ------------------------------------------------------------------ parts
    def part_parameters(self, part: str) -> list[nn.Parameter]:
        """The parameters of one named part (config.MODEL_PARTS): what `finetune.freeze` names."""
        modules = {"vit": [self.visual], "poolers": [self.generative_pooler, self.contrastive_pooler],
                   "unimodal": [self.unimodal], "multimodal": [self.multimodal],
                   "adapter": [self.adapter] if self.adapter is not None else []}
        if part == "temperature":
            return [p for p in (self.logit_scale, self.logit_bias) if p is not None]
        if part not in modules:
            raise ValueError(f"unknown model part {part!r}; the parts are {', '.join(MODEL_PARTS)}")
        return [p for module in modules[part] for p in module.parameters()]

    # ------------------------------------------------------------------ optimiser
    def optimizer_param_groups(self, weight_decay: float) -> list[dict]:
        """Two AdamW groups: weight decay on matmul/conv weights; none on norms, biases, the token
        embedding, the pooler queries and the logit scale (and bias)."""
        no_decay_ids = {id(self.logit_scale), id(self.unimodal.token_embedding.weight),
                        id(self.generative_pooler.query), id(self.contrastive_pooler.query)}
        if self.logit_bias is not None:
            no_decay_ids.add(id(self.logit_bias))
        if isinstance(getattr(self.visual, "pos_embed", None), nn.Parameter):
            no_decay_ids.add(id(self.visual.pos_embed))
        for module in self.modules():
            if isinstance(module, (nn.LayerNorm, RMSNorm)):
                no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if id(param) in no_decay_ids or name.endswith(".bias"):
                no_decay.append(param)
            else:
                decay.append(param)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]
