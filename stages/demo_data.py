"""DVC stage `demo_data`: generate the embedded demo datasets (CC12M, MSCOCO, Flickr30K, ROCO stand-ins).

Under the paper preset (`data.demo: null`) it writes an empty folder: the real datasets are used.
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.checks import exit_on_user_error  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data.demo import generate_demo  # noqa: E402
from pipeline.io import write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="folder for the generated datasets")
    parser.add_argument("--summary", required=True, help="metrics JSON")
    args = parser.parse_args()

    cfg = load_config(args.params)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if cfg.data.demo is None:
        (out / "README.txt").write_text(f"preset {cfg.preset!r} uses the real datasets; no demo data.\n")
        write_json(args.summary, {"preset": cfg.preset, "generated": False})
        return
    start = time.perf_counter()
    summary = generate_demo(cfg.data.demo, out)
    summary.pop("files", None)  # paths, not metrics: `dvc metrics show` lists numbers
    summary["seconds"] = round(time.perf_counter() - start, 2)
    write_json(args.summary, summary)
    print(f"demo datasets written to {out} in {summary['seconds']} s")


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad value or a missing file: one line, no traceback
