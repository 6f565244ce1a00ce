"""Starting a stage: under torchrun (one process per device), or relaunching itself under torchrun."""

from __future__ import annotations

import os
import sys


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def relaunch_under_torchrun(nproc_per_node: int) -> None:
    """A stage started as a plain process replaces itself with `torchrun --standalone
    --nproc_per_node=N <the same command>` (N = train.nproc_per_node); under torchrun it returns."""
    if under_torchrun() or nproc_per_node <= 1:
        return
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc_per_node}", *sys.argv]
    print(f"launching: {' '.join(argv[1:])}", flush=True)
    os.execv(sys.executable, argv)
