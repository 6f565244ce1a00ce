"""Checkpoints: written atomically (temporary file, fsync, os.replace), read with
`torch.load(weights_only=True)`, so everything in them is tensors or plain Python values.

    <state_dir>/last.pt   the resumable state: model, optimizer, LR schedule, early stopping, train
                          counters, loader position, RNG states of every process, validation history,
                          MLflow run id, and the fingerprint of the configuration it belongs to
    <state_dir>/last.json a small summary of last.pt (step, epoch, position), written after it
    <state_dir>/best.pt   the best epoch's model (and optimizer, when early stopping may reload it)
    <out_dir>/final.pt, <out_dir>/best.pt   the stage's outputs: model weights, model config, metadata

The state directory is not a DVC output (DVC deletes outputs before it reruns a stage), so the
stage's outputs are written only when training has finished.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        if path.suffix == ".json":
            f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
        else:
            torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=True)


# ----------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- files


class Checkpointer:
    def __init__(self, state_dir: str | Path, out_dir: str | Path):
        self.state_dir, self.out_dir = Path(state_dir), Path(out_dir)
        self.last, self.best = self.state_dir / "last.pt", self.state_dir / "best.pt"

    def load_last(self, fingerprint: str, device: torch.device) -> dict | None:
        """The resumable state, if there is one for this configuration (else None: start afresh)."""
        if not self.last.exists():
            return None
        state = load(self.last, device)
        if state.get("fingerprint") != fingerprint:
            return None
        return state

    def save_last(self, state: dict) -> None:
        save_atomic(state, self.last)
        summary = {k: state["train"][k] for k in ("epoch", "step", "step_in_epoch", "done")}
        save_atomic({**summary, "fingerprint": state["fingerprint"]}, self.last.with_suffix(".json"))

    def save_best(self, state: dict) -> None:
        save_atomic(state, self.best)

    def load_best(self, device: torch.device) -> dict:
        return load(self.best, device)

    def write_output(self, name: str, payload: dict) -> Path:
        path = self.out_dir / f"{name}.pt"
        save_atomic(payload, path)
        return path

    def clear_state(self) -> None:
        """After a finished run: the next run of the stage starts afresh."""
        shutil.rmtree(self.state_dir, ignore_errors=True)
