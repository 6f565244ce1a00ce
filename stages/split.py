"""DVC stage `split@<dataset>`: train/val pairs of the downloaded images (see pipeline.data.split).

Streams: the downloaded samples are sorted by URL through run files in a scratch folder under the
system temporary directory (TMPDIR; about the size of the URL list's parquet files, removed at the
end), then split and written a chunk at a time, so memory does not follow the rows: measured by
benchmarks/split_memory.py (see the README, "How the data stages scale").
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.checks import exit_on_user_error  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.names import DATASETS  # noqa: E402
from pipeline.data.download import samples_by_url  # noqa: E402
from pipeline.data.split import write_splits  # noqa: E402
from pipeline.io import write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--download", required=True, help="download folder of the dataset")
    parser.add_argument("--out", required=True, help="folder for <split>.parquet")
    parser.add_argument("--counts", required=True, help="metrics JSON with counts per split")
    args = parser.parse_args()

    cfg = load_config(args.params).data.split
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"grr-coca-split-{args.dataset}-") as scratch:
        samples = samples_by_url(Path(args.download), Path(scratch))
        counts = write_splits(args.dataset, samples, out, cfg.cc12m_val_fraction, cfg.hash_salt)
    write_json(args.counts, {"dataset": args.dataset, **counts})
    print(f"{args.dataset}: {counts}")


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad value or a missing file: one line, no traceback
