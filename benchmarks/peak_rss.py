"""A child process's own peak RSS, measured right.

Not the child's ru_maxrss (os.wait4, resource.RUSAGE_CHILDREN): Linux carries a process's maxrss
across exec, so a stage started from a benchmark that itself holds hundreds of MB reports at least
that much (`python -c pass` started from a 500 MB process reports 511 MB). Instead the child runs
its script under a small wrapper that, as its interpreter exits, writes the process's VmHWM (its
own address space's peak since exec) to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Runs a script as __main__ and, as its interpreter exits, writes the process's peak RSS (VmHWM, kB)
# to the file named by its first argument.
WRAPPER = """
import atexit, runpy, sys
def report(path=sys.argv[1]):
    hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))
    open(path, 'w').write(hwm.split()[1])
atexit.register(report)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def wrapped(script: str | Path, args: list[str], peak_file: Path) -> list[str]:
    """The command line that runs `script args` with this interpreter and records its peak RSS."""
    return [sys.executable, "-c", WRAPPER, str(peak_file), str(script), *args]


def peak_mb(peak_file: Path) -> float:
    return int(peak_file.read_text()) / 1024


def run_measured(script: str | Path, args: list[str], peak_file: Path, cwd: Path, env: dict | None = None) -> dict:
    """Run `script args` as a child process (stdout discarded; exits on failure); its wall seconds,
    CPU seconds (user + system, with the children it reaped: os.wait4) and peak RSS in MB."""
    cmd = wrapped(script, args, peak_file)
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({os.waitstatus_to_exitcode(status)})")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": peak_mb(peak_file)}


def print_table(results: list[dict], size: str) -> None:
    """The markdown table of the memory benchmarks' runs: one row per (size, checkout)."""
    print(f"\n| {size} | code | wall s | CPU s | CPU s per 1M {size} | peak RSS MB |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r[size]:,} | {r['code']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['cpu_s'] / r[size] * 1e6:.1f} | {r['rss_mb']:.0f} |")


def add_comparison_arguments(parser: argparse.ArgumentParser, size: str, sizes: list[int], base_sizes: list[int],
                             stage: str, inputs: str) -> None:
    """The options of every stage memory benchmark: the sizes to run (--rows, --pairs), another
    checkout to run beside this one (--base) at some of them (--base-rows, --base-pairs), where to
    fabricate the inputs (--work) and whether to keep them (--keep)."""
    parser.add_argument(f"--{size}", type=int, nargs="+", default=sizes)
    parser.add_argument("--base", type=Path, help=f"another checkout whose {stage} to compare")
    parser.add_argument(f"--base-{size}", type=int, nargs="+", default=base_sizes)
    parser.add_argument("--work", type=Path, help=f"folder for the fabricated {inputs} (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help=f"keep the fabricated {inputs} and the outputs")


@contextlib.contextmanager
def work_folder(prefix: str, parent: Path | None, keep: bool) -> Iterator[Path]:
    """A new folder under `parent` (None: the system's temporary one), removed at the end unless `keep`."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
