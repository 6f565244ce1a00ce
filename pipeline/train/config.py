"""The training sections of params.yaml: `train` (what both phases share) and the phases `pretrain`
and `finetune` (docs/paper.md §Training). Values come from the presets only; `(ours)` marks
choices the paper does not state. Ranges are checked on creation, in pipeline/checks.py's style.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.checks import check_bool, check_choice, check_ints, check_number, fail
from pipeline.model.config import CONTRASTIVE_LOSSES, FREEZABLE_PARTS
from pipeline.names import DECODE_ON


@dataclass
class PhaseConfig:
    """One training phase."""

    epochs: int  # maximum epochs (early stopping may end a phase sooner)
    lr_max: float  # cosine-with-warm-restarts bounds (one cycle per epoch)
    lr_min: float
    warmup_steps: int  # linear warm-up, in optimiser steps (0 = none)
    lambda_con: float  # CoCa loss = lambda_con * L_con + lambda_cap * L_cap
    lambda_cap: float
    dropout: float  # on attention weights, residual branches and embeddings, in this phase
    # Early stopping on the epoch-end validation CoCa loss, with the paper's "soft reset": after
    # soft_reset_after epochs without improvement, reload the best state and divide both LR bounds by
    # lr_divisor; after lr_levels levels have been tried, stop. patience caps epochs without
    # improvement in all (9 = 3 levels x 3 epochs in the paper).
    early_stopping: bool
    patience: int
    soft_reset_after: int
    lr_levels: int
    lr_divisor: float
    min_delta: float  # an improvement must lower the loss by more than this (ours)
    # Training augmentation (ours; the paper states none, so its preset has none): a random resized
    # crop with this area range, e.g. [0.8, 1.0] (null: none), and a random horizontal flip, off by
    # default because captions say "left" and "right". pipeline/data/preprocess.py's Augment.
    crop_scale: list[float] | None
    hflip: bool

    section = "phase"  # its key in params.yaml (a class attribute, not a setting)

    @property
    def frozen_parts(self) -> list[str]:
        """The model parts (FREEZABLE_PARTS) this phase does not train: none unless a fine-tune says so."""
        return []

    @property
    def adapter(self) -> bool:
        """Whether this phase adds the cross-modal adapter to the model (adapter fine-tuning only)."""
        return False

    def __post_init__(self) -> None:
        p = self.section
        check_ints(self, p, ("epochs", "patience", "soft_reset_after", "lr_levels"))
        check_ints(self, p, ("warmup_steps",), minimum=0)
        check_number(self, p, "lr_max", above=0)
        check_number(self, p, "lr_min", above=0, at_most=self.lr_max)
        for name in ("lambda_con", "lambda_cap", "min_delta"):
            check_number(self, p, name, at_least=0)
        if self.lambda_con == 0 and self.lambda_cap == 0:
            fail(f"{p}.lambda_cap", self.lambda_cap, f"a number > 0 when {p}.lambda_con is 0 (nothing to train)")
        check_number(self, p, "dropout", at_least=0, below=1)
        check_bool(self, p, "early_stopping")
        check_number(self, p, "lr_divisor", above=1)
        check_bool(self, p, "hflip")
        scale = self.crop_scale
        if scale is not None and (not isinstance(scale, list) or len(scale) != 2
                                  or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scale)
                                  or not 0 < scale[0] <= scale[1] <= 1):
            fail(f"{p}.crop_scale", scale, "null or [low, high] with 0 < low <= high <= 1 (fractions of the image's area)")


@dataclass
class PretrainConfig(PhaseConfig):
    section = "pretrain"


@dataclass
class FinetuneConfig(PhaseConfig):
    # Parts of the pre-trained model kept frozen (Prismatic's frozen ViT, say): any of FREEZABLE_PARTS.
    freeze: list[str] = dataclasses.field(default_factory=list)
    # full: train the model (but its frozen parts) | adapter: add CROME's gated cross-modal adapter
    # before the multimodal decoder and train it alone (model.adapter_dim)
    mode: str = "full"

    section = "finetune"

    def __post_init__(self) -> None:
        super().__post_init__()
        p = self.section
        check_choice(self, p, "mode", ("full", "adapter"))
        if not isinstance(self.freeze, list) or any(part not in FREEZABLE_PARTS for part in self.freeze):
            fail(f"{p}.freeze", self.freeze, f"a list of parts from {', '.join(FREEZABLE_PARTS)}")
        if len(set(self.freeze)) != len(self.freeze):
            fail(f"{p}.freeze", self.freeze, "a list that names each part once")
        if set(self.freeze) == set(FREEZABLE_PARTS):
            fail(f"{p}.freeze", self.freeze, "a list that leaves at least one part to train")
        if self.mode == "adapter" and self.freeze:
            fail(f"{p}.freeze", self.freeze, "[] when finetune.mode is adapter (it trains the adapter alone)")

    @property
    def frozen_parts(self) -> list[str]:
        return list(FREEZABLE_PARTS) if self.mode == "adapter" else list(self.freeze)

    @property
    def adapter(self) -> bool:
        return self.mode == "adapter"


# How the joint fine-tune draws its micro-batches from the fine-tuning sets (pipeline/data/mixture.py):
# each set with probability proportional to the square root of its size (CROME's balancing), to its
# size, or the same for all.
JOINT_SAMPLINGS = ("sqrt", "proportional", "uniform")


@dataclass
class JointConfig:
    """The joint fine-tune (stage finetune_joint): one model fine-tuned on MSCOCO, ROCO and Flickr30K
    together, with the `finetune` section's schedule, losses and early stopping; only these differ."""

    sampling: str  # sqrt | proportional | uniform: each micro-batch's dataset is drawn with these weights
    epochs: int  # maximum epochs of the joint run (an epoch: the three training sets' samples together)

    section = "joint"

    def __post_init__(self) -> None:
        check_choice(self, self.section, "sampling", JOINT_SAMPLINGS)
        check_ints(self, self.section, ("epochs",))


@dataclass
class TrainConfig:
    nproc_per_node: int  # processes per node (torchrun --nproc_per_node); the paper used 4 GPUs
    device: Literal["auto", "cpu", "cuda"]  # auto: cuda when available (training and evaluation)
    precision: Literal["fp32", "bf16"]  # bf16 autocast where the device supports it, else fp32 (ours)
    compile: bool  # torch.compile the model (ours)
    seed: int  # initial weights, data order, dropout
    micro_batch_size: int  # per process
    grad_accum_steps: int  # 48 x 4 GPUs x 4 = 768 samples per optimiser step in the paper
    num_workers: int  # DataLoader workers per process (ours)
    # Streams an epoch is cut into (each reads its own shards; every micro-batch takes the same number
    # of samples from each). 0 = world size x max(1, num_workers). Fix it to make the data order
    # independent of the number of processes and workers (ours).
    data_streams: int
    shuffle_buffer: int  # samples per stream's shuffle buffer (ours)
    val_batch_size: int  # validation batch (ours)
    val_at_start: bool  # validate once before the first step (the curve's starting point)
    log_every_steps: int
    val_every_steps: int  # also validate every N steps (curves only); 0 = at each epoch end only
    ckpt_every_steps: int  # resumable checkpoint every N optimiser steps (and at each epoch end)
    max_steps_per_epoch: int  # 0 = whole epochs; > 0 caps an epoch (smoke runs) (ours)
    grad_clip: float
    weight_decay: float
    betas: list[float]
    eps: float
    threads_per_process: int  # torch CPU threads per process; 0 = cores / local processes
    # The contrastive objective of both phases: softmax (the paper's symmetric InfoNCE) | sigmoid
    # (SigLIP's pairwise loss with a learnable bias; logit scale starts at 10, bias at -10)
    contrastive_loss: str = "softmax"
    # Where training and validation images are decoded (ours): workers (the DataLoader's, on the CPU) |
    # device (together per micro-batch on the training device: nvJPEG on a GPU; pipeline/data/loader.py)
    decode_on: str = "workers"

    section = "train"

    def __post_init__(self) -> None:
        p = self.section
        check_ints(self, p, ("nproc_per_node", "micro_batch_size", "grad_accum_steps", "shuffle_buffer",
                             "val_batch_size", "log_every_steps"))
        check_ints(self, p, ("num_workers", "data_streams", "val_every_steps", "ckpt_every_steps",
                             "max_steps_per_epoch", "threads_per_process", "seed"), minimum=0)
        check_choice(self, p, "device", ("auto", "cpu", "cuda"))
        check_choice(self, p, "precision", ("fp32", "bf16"))
        check_choice(self, p, "contrastive_loss", CONTRASTIVE_LOSSES)
        check_choice(self, p, "decode_on", DECODE_ON)
        check_bool(self, p, "compile")
        check_bool(self, p, "val_at_start")
        check_number(self, p, "grad_clip", above=0)
        check_number(self, p, "weight_decay", at_least=0)
        check_number(self, p, "eps", above=0)
        betas = self.betas
        if (not isinstance(betas, list) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)):
            fail(f"{p}.betas", betas, "two numbers in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
