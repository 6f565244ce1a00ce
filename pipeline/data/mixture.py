"""The joint fine-tune's loader: micro-batches drawn from several datasets' TrainLoaders (loader.py).

Each micro-batch comes from one dataset, drawn with weights from the datasets' training sizes n_i
(`joint.sampling`):

    sqrt          w_i ∝ sqrt(n_i)   CROME's balancing: a small set is seen more often than its share,
                                    a large one less, without the small one dominating (uniform)
    proportional  w_i ∝ n_i         as if the sets were concatenated
    uniform       w_i = 1 / k

One dataset per micro-batch keeps the draw the sampling itself (no per-sample bookkeeping), and each
contrastive loss then sees negatives of one domain, as in the one-dataset fine-tunes.

An epoch is the three training sets' samples together divided by the global batch (micro-batch x
processes x accumulation steps), in optimiser steps (capped by train.max_steps_per_epoch). Its
sequence of datasets, one per micro-batch, is drawn from (seed, epoch) alone, so every process
draws the same one: process r's micro-batch k and the other processes' micro-batch k come from the
same dataset (the global micro-batch too), and every process yields the same number of them.

Each dataset is an endless run of its own TrainLoader's epochs 0, 1, 2, ... (each a full pass in a
new order, by TrainLoader's rules): a set drawn more often than its share starts its next pass
sooner. Resume is exact: the state is the mixture's position (epoch, micro-batches consumed) and
each dataset loader's own state_dict.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator
from typing import Any

import torch

from pipeline.data.loader import Batch, TrainLoader
from pipeline.data.preprocess import Augment
from pipeline.train.config import JOINT_SAMPLINGS


def mixture_weights(sizes: dict[str, int], sampling: str) -> dict[str, float]:
    """Each dataset's probability of being drawn for a micro-batch (they add up to 1)."""
    if sampling not in JOINT_SAMPLINGS:
        raise ValueError(f"key 'joint.sampling': value {sampling!r} is not allowed; allowed: "
                         f"{', '.join(JOINT_SAMPLINGS)}")
    raw = {name: {"sqrt": math.sqrt(n), "proportional": float(n), "uniform": 1.0}[sampling]
           for name, n in sizes.items()}
    total = sum(raw.values())
    return {name: w / total for name, w in raw.items()}


class MixtureLoader:
    """Micro-batches of one process, each from one of several datasets; `state_dict()` is its position.
    The same interface as TrainLoader's, as the trainer uses it."""

    def __init__(self, loaders: dict[str, TrainLoader], *, sampling: str, grad_accum_steps: int, seed: int,
                 max_steps_per_epoch: int = 0):
        for name, lo in loaders.items():
            if lo.grad_accum_steps != 1 or lo.max_steps_per_epoch:
                raise ValueError(f"{name}: a mixed loader yields whole passes of micro-batches "
                                 "(grad_accum_steps 1, max_steps_per_epoch 0)")
        self.loaders, self.sampling, self.seed = loaders, sampling, seed
        self.grad_accum_steps, self.max_steps_per_epoch = grad_accum_steps, max_steps_per_epoch
        first = next(iter(loaders.values()))
        self.streams, self.world_size, self.micro_batch_size = first.streams, first.world_size, first.micro_batch_size
        self.sizes = {name: lo.manifest.samples for name, lo in loaders.items()}
        self.weights = mixture_weights(self.sizes, sampling)
        self.epoch, self.micro = 0, 0

    @classmethod
    def from_config(cls, shard_dirs: dict[str, Any], tcfg: Any, model_cfg: Any, sampling: str, *, rank: int = 0,
                    world_size: int = 1, augment: Augment = Augment(),
                    device: torch.device | str = "cpu") -> "MixtureLoader":
        """The loader of a joint run: `shard_dirs` maps each dataset to its training shards."""
        whole_passes = dataclasses.replace(tcfg, grad_accum_steps=1, max_steps_per_epoch=0)
        loaders = {name: TrainLoader.from_config(path, whole_passes, model_cfg, rank=rank, world_size=world_size,
                                                 augment=augment, device=device) for name, path in shard_dirs.items()}
        return cls(loaders, sampling=sampling, grad_accum_steps=tcfg.grad_accum_steps, seed=tcfg.seed,
                   max_steps_per_epoch=tcfg.max_steps_per_epoch)

    # ---------------------------------------------------------------- sizes
    def steps_in_epoch(self, epoch: int) -> int:
        """Optimiser steps in an epoch: every set's samples once over the global batch (the same on every
        process, for every epoch)."""
        global_batch = self.micro_batch_size * self.world_size * self.grad_accum_steps
        steps = sum(self.sizes.values()) // global_batch
        if self.max_steps_per_epoch:
            steps = min(steps, self.max_steps_per_epoch)
        if steps == 0:
            raise ValueError(f"the mixed sets' {sum(self.sizes.values())} samples make no optimiser step of "
                             f"{global_batch}; lower train.micro_batch_size or train.grad_accum_steps")
        return steps

    def sequence(self, epoch: int) -> list[str]:
        """The dataset of each micro-batch of `epoch`, in order: a function of (seed, epoch) alone."""
        names = list(self.loaders)
        rng = random.Random(f"mixture:{self.seed}:{epoch}")
        n = self.steps_in_epoch(epoch) * self.grad_accum_steps
        return rng.choices(names, weights=[self.weights[name] for name in names], k=n)

    @property
    def corrupt_total(self) -> int:
        return sum(lo.corrupt_total for lo in self.loaders.values())

    # ---------------------------------------------------------------- position
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "micro": self.micro, "sampling": self.sampling,
                "loaders": {name: lo.state_dict() for name, lo in self.loaders.items()}}

    def load_state_dict(self, state: dict) -> None:
        if sorted(state["loaders"]) != sorted(self.loaders) or state["sampling"] != self.sampling:
            raise ValueError(f"the checkpoint mixes {sorted(state['loaders'])} by {state['sampling']}, this run "
                             f"{sorted(self.loaders)} by {self.sampling}: resume with the same sets and sampling")
        self.epoch, self.micro = state["epoch"], state["micro"]
        for name, lo in self.loaders.items():
            lo.load_state_dict(state["loaders"][name])

    # ---------------------------------------------------------------- iteration
    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """This process's micro-batches of `epoch`, from the saved position if it is in `epoch`."""
        if epoch != self.epoch:
            self.epoch, self.micro = epoch, 0
        streams: dict[str, Iterator[Batch]] = {}
        try:
            for name in self.sequence(epoch)[self.micro:]:
                if name not in streams:
                    streams[name] = self._passes(self.loaders[name])
                batch = next(streams[name])
                self.micro += 1
                yield batch
        finally:
            for stream in streams.values():
                stream.close()

    @staticmethod
    def _passes(loader: TrainLoader) -> Iterator[Batch]:
        """One dataset's micro-batches, pass after pass, from the loader's saved position."""
        epoch = loader.epoch
        while True:
            passes = loader.iter_epoch(epoch)
            try:
                yield from passes
            finally:
                passes.close()
            epoch += 1
