"""ModelConfig: every number that shapes a CoCa model (the `model:` section), validated on creation.

Field names are the YAML keys. The presets (pipeline/presets/*.yaml) are the only source of the
values the paper or the demo fixes: those fields have no default here. The few fields with a
default are library constants no preset needs to state. Dropout is not part of the architecture:
the training phase passes it to `CoCa(cfg, dropout=...)` (docs/paper.md §Training).
This module imports nothing above the model package (no pipeline.config, no torch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.checks import check_bool, check_choice, check_ints, check_number, fail
from pipeline.names import ENCODERS
from pipeline.tokens import TokenLayout

SECTION = "model"


@dataclass
class ModelConfig:
    # Which ViT: "baseline" (LayerNorm, GELU MLP, fixed 2-D sin-cos positions added once) or
    # "grr" (RMSNorm, GEGLU, 2-D RoPE in every attention layer). Nothing else differs.
    encoder: str
    # Input images are image_size x image_size RGB, cut into (image_size / patch_size)^2 patches.
    image_size: int
    patch_size: int
    # Embedding width everywhere (ViT, poolers, both text decoders).
    dim: int
    # Blocks in the ViT, the unimodal text decoder and the multimodal text decoder.
    vit_layers: int
    unimodal_layers: int
    multimodal_layers: int
    # Attention heads in every attention layer (head width = dim / heads).
    heads: int
    # Hidden widths: int(mlp_ratio * dim) for the Baseline ViT's GELU MLP, int(geglu_ratio * dim)
    # for every GEGLU (GRR ViT, both text decoders).
    mlp_ratio: float
    geglu_ratio: float
    # INPUT text tokens: the caption sequence has context_length + 1 ids (pipeline/tokens.py).
    context_length: int
    # Vocabulary size, BOS and CLS included (they are its last two ids).
    vocab_size: int
    # Learned queries of the generative attentional pooler (the multimodal decoder's context).
    pooler_queries: int
    # Library constants, not set by the presets:
    text_geglu_bias: bool = False  # biases on the text decoders' GEGLU linears (the ViT's have them)
    rope_base: float = 10000.0  # RoPE theta, text decoders and GRR ViT
    init_std: float = 0.02  # truncated-normal init (CoCa._init_weights)

    def __post_init__(self) -> None:
        p = SECTION
        check_choice(self, p, "encoder", ENCODERS)
        check_ints(self, p, ("image_size", "patch_size", "dim", "vit_layers", "unimodal_layers",
                             "multimodal_layers", "heads", "pooler_queries"))
        if self.image_size % self.patch_size:
            fail(f"{p}.image_size", self.image_size, f"a multiple of model.patch_size ({self.patch_size})")
        if self.dim % self.heads:
            fail(f"{p}.dim", self.dim, f"a multiple of model.heads ({self.heads})")
        if (self.dim // self.heads) % 4:
            fail(f"{p}.heads", self.heads, f"a divisor of model.dim ({self.dim}) giving a head width divisible "
                                          "by 4 (2-D RoPE rotates channel pairs on two axes)")
        for name in ("mlp_ratio", "geglu_ratio"):
            check_number(self, p, name, above=0)
            if int(getattr(self, name) * self.dim) < 1:
                fail(f"{p}.{name}", getattr(self, name), "a ratio with int(ratio * model.dim) >= 1")
        check_ints(self, p, ("context_length",), minimum=TokenLayout.MIN_CONTEXT)
        check_ints(self, p, ("vocab_size",), minimum=TokenLayout(0).first_caption_id + 3)
        check_bool(self, p, "text_geglu_bias")
        check_number(self, p, "rope_base", above=1)
        check_number(self, p, "init_std", above=0)

    # ------------------------------------------------------------------ derived
    @property
    def tokens(self) -> TokenLayout:
        return TokenLayout(self.vocab_size)

    @property
    def pad_id(self) -> int:
        return self.tokens.pad

    @property
    def eos_id(self) -> int:
        return self.tokens.eos

    @property
    def bos_id(self) -> int:
        return self.tokens.bos

    @property
    def cls_id(self) -> int:
        return self.tokens.cls

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_ratio * self.dim)

    @property
    def geglu_hidden(self) -> int:
        return int(self.geglu_ratio * self.dim)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed, validated again (the special ids follow vocab_size)."""
        return dataclasses.replace(self, **changes)
