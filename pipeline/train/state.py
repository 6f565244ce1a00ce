"""What one training stage runs (RunSpec: its inputs and outputs, all paths from dvc.yaml) and where
it is (TrainState: the counters and the validation history, a stateful part of every checkpoint)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.checks import UserError


@dataclass
class RunSpec:
    """What one stage trains, and where its inputs and outputs are (all paths from dvc.yaml)."""

    phase: str  # pretrain | finetune
    dataset: str
    train_shards: Path
    val_shards: Path
    out_dir: Path  # final.pt, best.pt (DVC outputs)
    state_dir: Path  # resumable state (not a DVC output)
    metrics_json: Path
    val_tsv: Path
    tokenizer: Path | None = None  # travels inside the output checkpoints
    init: Path | None = None  # fine-tuning: the pre-trained checkpoint
    repo: Path = Path(".")  # where dvc.lock and .git are (the working copy)
    # The joint fine-tune (dataset "joint"): each mixed dataset's (training, validation) shards, by name;
    # train_shards and val_shards are then the first one's. Empty for a one-dataset run.
    mixed: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    # A training stage's command-line paths (dvc.yaml passes them all: no defaults here).
    ARGUMENTS = (("--train", "training shards (with manifest.json)"), ("--val", "validation shards"),
                 ("--tokenizer", "saved inside the output checkpoints"), ("--out", "folder for final.pt and best.pt"),
                 ("--state", "resumable state (not a DVC output)"), ("--metrics", "final validation metrics (JSON)"),
                 ("--curve", "validation curve (TSV)"))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, mixed: bool = False) -> argparse.ArgumentParser:
        """`mixed`: --train and --val take NAME=PATH for each dataset of a joint fine-tune."""
        for flag, help_text in cls.ARGUMENTS:
            if mixed and flag in ("--train", "--val"):
                parser.add_argument(flag, required=True, nargs="+", metavar="NAME=PATH", help=help_text)
            else:
                parser.add_argument(flag, required=True, help=help_text)
        return parser

    def sets(self) -> dict[str, tuple[Path, Path]]:
        """The datasets this run trains on: {name: (training shards, validation shards)}."""
        return self.mixed or {self.dataset: (self.train_shards, self.val_shards)}

    def check_inputs(self) -> None:
        """The shards' manifests and the initial checkpoint exist (else: which to make first)."""
        wanted = [path / "manifest.json" for pair in self.sets().values() for path in pair] + [self.init]
        missing = [str(path) for path in wanted if path is not None and not Path(path).is_file()]
        if missing:
            raise UserError(f"{', '.join(missing)}: not found; run the stages that make them first (dvc repro)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, phase: str, dataset: str, init: str | None = None) -> "RunSpec":
        return cls(phase, dataset, Path(args.train), Path(args.val), Path(args.out), Path(args.state),
                   Path(args.metrics), Path(args.curve), Path(args.tokenizer), Path(init) if init else None, Path.cwd())

    @classmethod
    def mixed_from_args(cls, args: argparse.Namespace, dataset: str, names: tuple[str, ...],
                        init: str) -> "RunSpec":
        """A joint fine-tune's spec from --train and --val given as NAME=PATH, one of each per name."""
        sets = {}
        for flag, given in (("--train", args.train), ("--val", args.val)):
            pairs = dict(item.partition("=")[::2] for item in given)
            if sorted(pairs) != sorted(names) or len(pairs) != len(given) or not all(pairs.values()):
                raise UserError(f"{flag}: expected NAME=PATH once for each of {', '.join(names)}; got {' '.join(given)}")
            for name in names:
                sets.setdefault(name, []).append(Path(pairs[name]))
        mixed = {name: (train, val) for name, (train, val) in sets.items()}
        first = mixed[names[0]]
        return cls("finetune", dataset, first[0], first[1], Path(args.out), Path(args.state), Path(args.metrics),
                   Path(args.curve), Path(args.tokenizer), Path(init), Path.cwd(), mixed)


@dataclass
class TrainState:
    epoch: int = 0  # the epoch to run next (or being run)
    step: int = 0  # optimiser steps done in the whole phase
    step_in_epoch: int = 0
    steps_in_epoch: int = 1
    done: bool = False  # early stopping ended training
    run_id: str | None = None
    history: list = field(default_factory=list)  # validation results (the curve)
    best_val: dict | None = None

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
