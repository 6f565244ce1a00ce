"""benchmarks/gpu_check.py on the CPU: the whole one-shot GPU check runs on a tiny model, prints every
section's row, its loss curve falls, and it stays importable without the pipeline's heavy packages
(the lent GPU machine has only torch, torchvision and transformers)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# What the GPU machine lacks, and the project modules that would pull it in.
BLOCKED = ("mlflow", "dvc", "webdataset", "pandas", "pipeline.tracking", "pipeline.train.loop",
           "pipeline.data.loader")


def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def table_rows(stdout: str, section: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(f"| {section} ")]


def test_tiny_cpu_run_prints_every_section_and_the_loss_falls():
    result = run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "failed:" not in out
    steps = table_rows(out, "train step")
    assert len(steps) == 4  # two encoders, eager and compiled
    assert sum("samples/s" in row for row in steps) == 2  # the eager rows ran
    assert sum("skipped" in row for row in steps) == 2  # compile on cpu only with --compile-on-cpu
    assert any(row.startswith("| train step ") and "grr" in row for row in steps)
    assert any("baseline" in row for row in steps)
    memory = table_rows(out, "peak memory")
    assert len(memory) == 2 and all("n/a" in row for row in memory)
    assert any("captions/s" in row for row in table_rows(out, "beam search"))
    decode = table_rows(out, "JPEG decode")
    assert any("images/s" in row for row in decode)
    # The training path's device decode on the CPU: libjpeg-turbo, as the workers' decode_image.
    assert any("against the CPU path" in row and "max 0 grey levels" in row for row in decode)
    ratio = table_rows(out, "decode / step")
    assert ratio and ">= 3x" in ratio[0]
    curve = table_rows(out, "loss curve")
    assert len(curve) == 1 and "step 1:" in curve[0] and "step 50:" in curve[0]
    assert curve[0].rstrip(" |").endswith("PASS"), curve[0]
    assert "loss curve: PASS" in out


def test_imports_stay_light():
    """The script and its model step run with the GPU image's packages only: each blocked name is None
    in sys.modules, so importing it raises ImportError."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None
        spec = importlib.util.spec_from_file_location("gpu_check", {str(SCRIPT)!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # dataclasses look their module up while it is executed
        spec.loader.exec_module(module)
        rc = module.main(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "0", "--curve-steps", "3"])
        loaded = sorted(m for m in sys.modules if sys.modules[m] is not None
                        and any(m == b or m.startswith(b + ".") for b in {BLOCKED!r}))
        print("HEAVY", loaded)
        sys.exit(rc)
    """)
    result = run([sys.executable, "-c", code], timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "failed:" not in result.stdout
    assert "HEAVY []" in result.stdout
