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

# The ViT's three design choices (docs/paper.md §Architecture) and the paper's two bundles of them.
VIT_NORMS = ("layernorm", "rmsnorm")
VIT_FFNS = ("gelu", "geglu", "swiglu")  # swiglu: CogVLM's (not in the paper's bundles)
VIT_POSITIONS = ("sincos", "learned", "rope2d")
BUNDLES = {"baseline": ("layernorm", "gelu", "sincos"), "grr": ("rmsnorm", "geglu", "rope2d")}
# The named parts of a CoCa model that a fine-tune may freeze (`finetune.freeze`; CoCa.part_parameters):
# the ViT, the two attentional poolers, the unimodal text decoder (token embedding included), the
# multimodal text decoder (vocabulary head included), the contrastive temperature (and bias).
FREEZABLE_PARTS = ("vit", "poolers", "unimodal", "multimodal", "temperature")
MODEL_PARTS = (*FREEZABLE_PARTS, "adapter")  # the adapter: only in adapter fine-tuning, and it trains
# The contrastive objectives (`train.contrastive_loss`): the paper's softmax InfoNCE (CLIP, CoCa) or
# SigLIP's pairwise sigmoid loss, which adds a learnable bias to the model (CoCa's `contrastive_loss`).
CONTRASTIVE_LOSSES = ("softmax", "sigmoid")
# The text decoders' feed-forward (both variants of the paper use GEGLU; the others for ablations).
TEXT_FFNS = ("geglu", "swiglu", "gelu")


@dataclass
class VitFactors:
    """Each GRR change on its own switch (`model.vit.norm` ...); null takes it from `model.encoder`'s
    bundle, so `model.encoder` alone gives the paper's two models exactly."""

    norm: str | None = None  # layernorm | rmsnorm: the ViT blocks' pre-norm
    # gelu (Linear, GELU, Linear; hidden mlp_ratio x dim) | geglu | swiglu (gated; hidden geglu_ratio x dim)
    ffn: str | None = None
    pos: str | None = None  # sincos (fixed, added once) | learned (trained, added once) | rope2d (every layer)

    def __post_init__(self) -> None:
        for name, allowed in (("norm", VIT_NORMS), ("ffn", VIT_FFNS), ("pos", VIT_POSITIONS)):
            if getattr(self, name) is not None:
                check_choice(self, f"{SECTION}.vit", name, allowed)


@dataclass
class TextFactors:
    """The text decoders' design choices (`model.text.ffn`); the defaults are the paper's."""

    # geglu (the paper's) | swiglu (the same shapes, SiLU gate) | gelu (Linear, GELU, Linear; hidden
    # mlp_ratio x dim): every feed-forward of the unimodal and the multimodal decoder
    ffn: str = "geglu"

    def __post_init__(self) -> None:
        check_choice(self, f"{SECTION}.text", "ffn", TEXT_FFNS)


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
    # Hidden widths: int(mlp_ratio * dim) for every GELU MLP (the Baseline ViT's), int(geglu_ratio * dim)
    # for every gated feed-forward, GEGLU or SwiGLU (GRR ViT, both text decoders).
    mlp_ratio: float
    geglu_ratio: float
    # INPUT text tokens: the caption sequence has context_length + 1 ids (pipeline/tokens.py).
    context_length: int
    # Vocabulary size, BOS and CLS included (they are its last two ids).
    vocab_size: int
    # Learned queries of the generative attentional pooler (the multimodal decoder's context).
    pooler_queries: int
    # The ViT's design choices one by one (null: from the encoder's bundle).
    vit: VitFactors = dataclasses.field(default_factory=VitFactors)
    # The text decoders' choices (default: the paper's).
    text: TextFactors = dataclasses.field(default_factory=TextFactors)
    # Bottleneck width of the fine-tuning adapter (`finetune.mode: adapter`; no adapter otherwise). The
    # default reads checkpoints from before it existed (they have no adapter).
    adapter_dim: int = 512
    # Library constants, not set by the presets:
    text_geglu_bias: bool = False  # biases on the text decoders' feed-forward linears (the ViT's have them)
    rope_base: float = 10000.0  # RoPE theta, text decoders and GRR ViT
    init_std: float = 0.02  # truncated-normal init (CoCa._init_weights)

    def __post_init__(self) -> None:
        p = SECTION
        if isinstance(self.vit, dict):  # from a checkpoint's model_config
            self.vit = VitFactors(**self.vit)
        if isinstance(self.text, dict):
            self.text = TextFactors(**self.text)
        check_choice(self, p, "encoder", ENCODERS)
        check_ints(self, p, ("image_size", "patch_size", "dim", "vit_layers", "unimodal_layers",
                             "multimodal_layers", "heads", "pooler_queries", "adapter_dim"))
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
    def vit_design(self) -> tuple[str, str, str]:
        """(norm, ffn, pos) in force: each explicit factor, else the encoder bundle's."""
        bundle = BUNDLES[self.encoder]
        return tuple(chosen or default for chosen, default in zip((self.vit.norm, self.vit.ffn, self.vit.pos), bundle))

    @property
    def variant(self) -> str:
        """The bundle's name when the design is one of the paper's two models, else the design itself
        (`vit-rmsnorm-gelu-sincos`): what run names and the `encoder` tag say."""
        design = self.vit_design
        return next((name for name, bundle in BUNDLES.items() if bundle == design), "vit-" + "-".join(design))

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
