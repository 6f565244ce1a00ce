"""The data stages' memory benchmarks run, and compare two checkouts' outputs (here: this one twice)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("script, size", [("download_memory.py", "rows"), ("split_memory.py", "rows"),
                                          ("shard_memory.py", "pairs")])
def test_memory_benchmark_measures_both_checkouts(tmp_path, script, size):
    args = [f"--{size}", "3000", "--base", str(ROOT), f"--base-{size}", "3000", "--work", str(tmp_path)]
    if script == "shard_memory.py":
        args += ["--workers", "1"]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| 3,000 |")]
    assert [row[2].strip() for row in rows] == ["branch", "base"]  # both measured, outputs compared equal
    assert all(float(row[-2]) > 100 for row in rows)  # a peak RSS in MB: at least the interpreter's
