"""Names that the stages, the trainer, tracking and the report must agree on, defined once.

`dvc.yaml`'s `vars: datasets` is the one copy that cannot import this module; `tests/test_dvc_yaml.py`
checks that it lists the same datasets.
"""

from __future__ import annotations

# Every dataset the pipeline downloads, splits and shards (dvc.yaml's order).
DATASETS = ("cc12m", "mscoco", "flickr30k", "roco")
PRETRAIN_DATASET = "cc12m"
# The fine-tuning sets (dvc.yaml's `finetune` foreach order).
FINETUNE_DATASETS = ("mscoco", "roco", "flickr30k")
# The joint fine-tune over every fine-tuning set (stage finetune_joint): its name in runs and outputs.
JOINT = "joint"
# The paper's Table 2 order of validation sets.
TABLE2_ORDER = ("cc12m", "mscoco", "roco", "flickr30k")
DATASET_TITLES = {"cc12m": "CC12M", "mscoco": "MSCOCO", "roco": "ROCO", "flickr30k": "Flickr30K"}

# The two named ViT bundles of the paper (model.encoder).
ENCODERS = ("grr", "baseline")
ENCODER_TITLES = {"baseline": "Baseline CoCa", "grr": "GRR-CoCa"}

PHASES = ("pretrain", "finetune")

# data.shard.resize_at: where an image becomes the model's square, in the shard stage (stored as JPEG) or
# in the loader (the downloaded file stored as it is); pipeline/data/shard.py.
RESIZE_AT = ("shard", "load")
# A shard sample's image member: jpg, or with resize_at load the downloaded file's own format.
IMAGE_FIELDS = ("jpg", "png", "webp")
# train.decode_on: where training images are decoded, in the DataLoader's workers on the CPU, or together
# per micro-batch on the training device (nvJPEG on a GPU); pipeline/data/loader.py.
DECODE_ON = ("workers", "device")

# The MLflow experiment every stage logs to.
EXPERIMENT = "grr-coca"


def phase_of(dataset: str) -> str:
    """The training phase whose validation set `dataset` is: CC12M is pre-training's."""
    return "pretrain" if dataset == PRETRAIN_DATASET else "finetune"


def run_name(phase: str, dataset: str, encoder: str) -> str:
    """The MLflow run name of a training stage: `pretrain-<encoder>` or `finetune-<dataset>-<encoder>`."""
    if phase == "pretrain":
        return f"pretrain-{encoder}"
    if phase == "finetune":
        return f"finetune-{dataset}-{encoder}"
    raise ValueError(f"phase {phase!r} is invalid: allowed {', '.join(PHASES)}")
