"""Processes, devices and everything applied around the model from outside (torchtitan style):
torch.distributed from torchrun's environment (gloo on CPU, NCCL on GPU), CPU threads, bf16
autocast, torch.compile and DDP. The model code knows nothing of them."""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import TrainConfig


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: TrainConfig) -> Dist:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (a plain `python` run is one process)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if "LOCAL_RANK" in os.environ:
        exit_with_launcher()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available (use auto or cpu)")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(cfg.threads_per_process or max(1, (os.cpu_count() or 1) // local_procs))
    if world > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(minutes=30)
        store, rank, world = next(dist.rendezvous("env://", rank, world, timeout=timeout))
        # After an elastic restart (`torchrun --max-restarts`) the launcher's store still holds the dead
        # workers' addresses: a key prefix per restart keeps the new group from dialling them.
        store = dist.PrefixStore(f"restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world,
                                timeout=timeout, device_id=device if use_cuda else None)
    return Dist(rank, world, local_rank, device)


def exit_with_launcher(poll_s: float = 0.5) -> None:
    """torchrun starts each worker in a session of its own, so killing the launcher's process group
    (`kill -9 -PGID`, `timeout -s KILL`, a job runner) misses the workers: orphans that would train on,
    into the same state directory as the rerun. On Linux the kernel kills this worker the moment its
    launcher dies (PR_SET_PDEATHSIG); elsewhere, and as a fallback, a watchdog thread does within
    `poll_s` (its parent process changes)."""
    launcher = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != launcher:  # the launcher died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where the device supports it; fp32 otherwise (CPU bf16 is slow, so: fp32)."""
    if cfg.precision == "bf16" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def effective_precision(cfg: TrainConfig, device: torch.device) -> str:
    return "bf16" if isinstance(autocast(cfg, device), torch.autocast) else "fp32"


def parallelize(model: nn.Module, cfg: TrainConfig, d: Dist) -> nn.Module:
    """Compile (in place: state_dict keys stay the same) and wrap in DDP when there are >1 processes.
    Returns the module to train with; the bare model stays the one to save and validate."""
    if cfg.compile:
        model.compile()
    if d.world_size > 1:
        # The model's buffers are constant tables (RoPE, positions): no need to broadcast them each step.
        return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                                       forward_sync_buffers=False)
    return model


def no_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce on the micro-steps that are not the last of an optimiser step."""
    if sync or not isinstance(module, DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def all_gather_object(obj):
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every process (a no-op in a single process); works on gloo and NCCL alike."""
    all_gather_object(None)
