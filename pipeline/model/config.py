"""ModelConfig: every number that shapes a CoCa model, validated once.

Field names are the YAML keys (``pipeline/config.py`` builds this dataclass from ``params.yaml``), so
keep them stable. Presets: ``ModelConfig.paper()`` (GRR-CoCa Table 1), ``ModelConfig.demo()`` (trains a
few hundred steps on 2 CPU cores in minutes) and ``ModelConfig.smoke()`` (tiny, for tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ENCODERS = ("grr", "baseline")


@dataclass
class ModelConfig:
    # Which ViT: "baseline" (LayerNorm, GELU MLP, fixed 2-D sin-cos positions added once) or
    # "grr" (RMSNorm, GEGLU, 2-D RoPE in every attention layer). Nothing else differs.
    encoder: str = "grr"
    # Input images are image_size x image_size RGB, cut into (image_size / patch_size)^2 patches.
    image_size: int = 288
    patch_size: int = 18
    # Embedding width everywhere (ViT, poolers, both text decoders).
    dim: int = 768
    # Number of blocks in the ViT, the unimodal text decoder and the multimodal text decoder.
    vit_layers: int = 12
    unimodal_layers: int = 12
    multimodal_layers: int = 12
    # Attention heads in every attention layer (head width = dim / heads).
    heads: int = 12
    # Baseline ViT GELU MLP hidden width = int(mlp_ratio * dim).
    mlp_ratio: float = 4.0
    # GEGLU hidden width = int(geglu_ratio * dim) (GRR ViT and both text decoders).
    geglu_ratio: float = 2.7
    # Biases on the three GEGLU linears of the text decoders (the ViT's GEGLU always has them).
    text_geglu_bias: bool = False
    # Number of INPUT text tokens: the caption sequence has context_length + 1 tokens, inputs drop the
    # last one and targets drop the first. The last input token is always CLS.
    context_length: int = 64
    # Vocabulary size, including the BOS and CLS tokens appended after the tokenizer's entries.
    vocab_size: int = 32102
    # Number of learned queries of the generative attentional pooler (its outputs are the multimodal
    # decoder's cross-attention context); the contrastive pooler always has 1.
    pooler_queries: int = 64
    # Dropout probability on attention weights, residual branches and embeddings.
    dropout: float = 0.0
    # RoPE base (theta) for the text decoders and the GRR ViT.
    rope_base: float = 10000.0
    # Standard deviation of the truncated-normal weight initialisation (see CoCa._init_weights).
    init_std: float = 0.02
    # Special token ids (T5 layout: pad 0, eos 1, unk 2). BOS and CLS are appended after the
    # tokenizer's entries; -1 means "automatic": bos_id = vocab_size - 2, cls_id = vocab_size - 1.
    pad_id: int = 0
    eos_id: int = 1
    bos_id: int = -1
    cls_id: int = -1

    def __post_init__(self) -> None:
        if self.bos_id == -1:
            self.bos_id = self.vocab_size - 2
        if self.cls_id == -1:
            self.cls_id = self.vocab_size - 1
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def fail(field: str, allowed: str) -> None:
            raise ValueError(
                f"model.{field} = {getattr(self, field)!r} is invalid: allowed {allowed}"
            )

        if self.encoder not in ENCODERS:
            fail("encoder", f"one of {ENCODERS}")
        for name in ("image_size", "patch_size", "dim", "vit_layers", "unimodal_layers",
                     "multimodal_layers", "heads", "pooler_queries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(name, "a positive integer")
        if self.image_size % self.patch_size:
            fail("image_size", f"a multiple of patch_size ({self.patch_size})")
        if self.dim % self.heads:
            fail("dim", f"a multiple of heads ({self.heads})")
        if (self.dim // self.heads) % 4:
            fail("heads", f"a divisor of dim ({self.dim}) giving a head width divisible by 4 "
                          "(2-D RoPE rotates channel pairs on two axes)")
        if self.dim % 4:
            fail("dim", "a multiple of 4 (2-D sin-cos positions)")
        for name in ("mlp_ratio", "geglu_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or int(value * self.dim) < 1:
                fail(name, "a positive number with int(ratio * dim) >= 1")
        if not isinstance(self.text_geglu_bias, bool):
            fail("text_geglu_bias", "true or false")
        if not isinstance(self.context_length, int) or self.context_length < 3:
            fail("context_length", "an integer >= 3 (BOS, EOS and CLS must fit)")
        if not isinstance(self.vocab_size, int) or self.vocab_size < 4:
            fail("vocab_size", "an integer >= 4")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            fail("dropout", "a number in [0, 1)")
        if not isinstance(self.rope_base, (int, float)) or self.rope_base <= 1.0:
            fail("rope_base", "a number > 1")
        if not isinstance(self.init_std, (int, float)) or self.init_std <= 0.0:
            fail("init_std", "a number > 0")
        ids = {}
        for name in ("pad_id", "eos_id", "bos_id", "cls_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                fail(name, f"an integer in [0, vocab_size={self.vocab_size}) (or -1 for bos/cls: auto)")
            if value in ids:
                fail(name, f"an id different from {ids[value]} ({value})")
            ids[value] = name

    # ------------------------------------------------------------------ derived sizes
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
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """The `model:` section of pipeline/presets/<name>.yaml (the one definition of each preset)."""
        from pipeline.config import ConfigError, build_config  # here: pipeline.config imports this module

        try:
            base = build_config({"preset": name}).model
        except ConfigError as e:
            raise ValueError(f"model preset {name!r}: {e}") from None
        return base.replace(**overrides)

    @classmethod
    def paper(cls, **overrides: Any) -> "ModelConfig":
        return cls.preset("paper", **overrides)

    @classmethod
    def demo(cls, **overrides: Any) -> "ModelConfig":
        return cls.preset("demo", **overrides)

    @classmethod
    def smoke(cls, **overrides: Any) -> "ModelConfig":
        return cls.preset("smoke", **overrides)
