"""The tree itself: no merge left half-done."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)


def test_no_tracked_file_holds_a_merge_conflict_marker():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    marked = []
    for name in files:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".tsv"} or name in {"Makefile", ".ci/run"}:
            if MARKER.search(path.read_text(errors="replace")):
                marked.append(name)
    assert not marked, f"merge-conflict markers in {marked}"
