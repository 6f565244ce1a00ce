"""Exact resume (torchtitan's shape): the trainer registers its stateful parts once, and the
`Checkpointer` saves and restores all of them, at any optimiser step.

    <state_dir>/last.pt    the resumable state: every registered part's `state_dict()`; the parts
                           that differ between processes (RNG, loader position) once per process;
                           and the fingerprint of what the run's result depends on
    <state_dir>/last.json  a small summary of last.pt (step, epoch, fingerprint), written after it
    <state_dir>/best.pt    the best epoch's model (and optimizer, when a soft reset may reload it)

The state directory is not a DVC output (DVC deletes outputs before it reruns a stage): the
stage's outputs (pipeline/checkpoint.py) are written only when training has finished. A state of
another fingerprint is left alone until the new run writes its first checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.io import atomic_write, write_json
from pipeline.tracking import SPOOL

from .parallelize import all_gather_object, barrier, broadcast_object


class NonFiniteLoss(RuntimeError):
    """A non-finite loss, gradient, validation or weight: training stops and keeps the last good state."""


def all_finite(state: Any) -> bool:
    """Every floating-point tensor in a (nested) state dict is finite."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(all_finite(v) for v in state)
    return True


class StateLock:
    """One run at a time per state directory: process 0 holds an exclusive lock on `<state_dir>/.lock`
    for the whole run (flock: released when the process ends, killed or not). A second run waits up to
    `wait_s` (a killed run's processes take a moment to go), then stops, naming the holder."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / ".lock"
        self.file = None

    def acquire(self, wait_s: float = 30.0) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.file.seek(0)
                    holder = self.file.read().strip() or "another process"
                    raise RuntimeError(f"{self.path.parent} is in use by another run ({holder}); wait for it to "
                                       "end, or stop it, then rerun") from None
                time.sleep(0.2)
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the file releases the lock
            self.file = None


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def fingerprint(sections: dict[str, Any], world_size: int, inputs: list[Path]) -> str:
    """What a run's result depends on: the params sections its stage declares in dvc.yaml (model,
    train and its phase), the number of processes (the data order and the RNG streams depend on it),
    and its inputs' contents (shard manifests, the initial weights). Nothing else: editing an
    `evaluate:` or another phase's key keeps an interrupted run resumable."""
    digest = hashlib.sha256(json.dumps({"sections": sections, "world_size": world_size},
                                       sort_keys=True, default=str).encode())
    for path in inputs:
        digest.update(str(Path(path).name).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load(path: Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=True)


def save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


# ----------------------------------------------------------------------------- RNG


class RNGState:
    """This process's Python, NumPy, torch and CUDA generators, as a stateful part."""

    def state_dict(self) -> dict:
        version, mt, gauss = random.getstate()
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        return {
            "python": [version, list(mt), gauss],
            "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state: dict) -> None:
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


# ----------------------------------------------------------------------------- the checkpointer


class Checkpointer:
    """`shared` parts are the same on every process (process 0 writes them); `per_process` parts are
    gathered from every process and each restores its own. Every process calls save() and load()."""

    def __init__(self, state_dir: str | Path, fingerprint: str, *, is_main: bool, rank: int,
                 shared: dict[str, Stateful], per_process: dict[str, Stateful]):
        self.state_dir, self.fingerprint = Path(state_dir), fingerprint
        self.is_main, self.rank = is_main, rank
        self.shared, self.per_process = shared, per_process
        self.last, self.best = self.state_dir / "last.pt", self.state_dir / "best.pt"
        self.lock = StateLock(self.state_dir)

    def save(self) -> None:
        """Every process checks the (replicated) shared parts: a state with a non-finite tensor is never
        written, so last.pt stays the last good one."""
        state = {name: part.state_dict() for name, part in self.shared.items()}
        if not all_finite(state):
            bad = [name for name, part in state.items() if not all_finite(part)]
            raise NonFiniteLoss(f"non-finite values in {', '.join(bad)}: not saved; {self.last} keeps the last "
                                "good state")
        parts = all_gather_object({name: part.state_dict() for name, part in self.per_process.items()})
        if self.is_main:
            save({"fingerprint": self.fingerprint, **state, "per_process": parts}, self.last)
            summary = {k: v for k, v in state.get("train", {}).items() if k in ("epoch", "step", "step_in_epoch", "done")}
            write_json(self.last.with_suffix(".json"), {**summary, "fingerprint": self.fingerprint})
        barrier()

    def load(self, device: torch.device) -> str:
        """Restore every part from last.pt: 'resumed', 'none' (no state) or 'other' (a state of another
        fingerprint, left in place until this run's first save replaces it). Process 0 first takes the
        state directory's lock, so two runs never share one."""
        error = None
        if self.is_main:
            try:
                self.lock.acquire()
            except RuntimeError as e:
                error = str(e)
        error = broadcast_object(error)
        if error:
            raise RuntimeError(error)
        if not self.last.exists():
            return "none"
        state = load(self.last, device)
        if state.get("fingerprint") != self.fingerprint:
            return "other"
        for name, part in self.shared.items():
            part.load_state_dict(state[name])
        mine = state["per_process"][self.rank]
        for name, part in self.per_process.items():
            part.load_state_dict(mine[name])
        return "resumed"

    def save_best(self, state: dict) -> None:
        if not all_finite(state):
            raise NonFiniteLoss(f"non-finite values in the best state: not saved to {self.best}")
        save(state, self.best)

    def load_best(self, device: torch.device | str) -> dict:
        return load(self.best, device)

    def release(self) -> None:
        """The run is over (finished or failed): another run may take the state directory."""
        self.lock.release()

    def clear(self) -> None:
        """After a finished run: the next run of the stage starts afresh. The MLflow spool stays until
        its records are sent (it removes itself, and then the emptied state directory)."""
        for path in self.state_dir.iterdir() if self.state_dir.is_dir() else []:
            if path.name == SPOOL:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.state_dir.rmdir()
