"""A fault to inject, for testing recovery: one training process exits at a given step, once.

    GRR_COCA_FAULT_STEP=5 GRR_COCA_FAULT_RANK=1 GRR_COCA_FAULT_MARKER=/tmp/fault-done

makes process 1 exit (code 1, no cleanup, as a crash would) right after optimiser step 5, unless the
marker file exists; it writes the marker first, so the restarted process group runs on. Unset, it
does nothing."""

from __future__ import annotations

import os
from pathlib import Path


def exit_if_due(step: int, rank: int) -> None:
    due = os.environ.get("GRR_COCA_FAULT_STEP")
    if not due or step != int(due) or rank != int(os.environ.get("GRR_COCA_FAULT_RANK", "0")):
        return
    marker = Path(os.environ["GRR_COCA_FAULT_MARKER"])  # required: without it the fault would repeat
    if marker.exists():
        return
    marker.write_text(f"process {rank} exited after step {step}\n")
    print(f"fault injected: process {rank} exits after step {step}", flush=True)
    os._exit(1)
