"""A child process's own peak RSS, measured right.

Not the child's ru_maxrss (os.wait4, resource.RUSAGE_CHILDREN): Linux carries a process's maxrss
across exec, so a stage started from a benchmark that itself holds hundreds of MB reports at least
that much (`python -c pass` started from a 500 MB process reports 511 MB). Instead the child runs
its script under a small wrapper that, as its interpreter exits, writes the process's VmHWM (its
own address space's peak since exec) to a file.
"""

from __future__ import annotations

import sys
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
