"""DVC stage `shard@<dataset>`: training shards of each split, with a manifest of sample counts.

Streams: each split's pairs and token rows are read a row group at a time and grouped by downloaded
tar through sorted run files on disk (pipeline.data.shard), so memory does not follow the rows:
measured by benchmarks/shard_memory.py.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.checks import exit_on_user_error  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.names import DATASETS  # noqa: E402
from pipeline.data.shard import shard_split  # noqa: E402
from pipeline.data.split import SPLITS  # noqa: E402
from pipeline.io import write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--download", required=True)
    parser.add_argument("--splits", required=True, help="folder holding <split>.parquet of the dataset")
    parser.add_argument("--tokens", required=True, help="folder holding <split>.npy of the dataset")
    parser.add_argument("--out", required=True, help="folder for <split>/shard-*.tar and manifests")
    parser.add_argument("--counts", required=True)
    args = parser.parse_args()

    cfg = load_config(args.params).data.shard
    counts = {"dataset": args.dataset}
    for split in SPLITS:
        manifest = shard_split(
            args.dataset,
            split,
            Path(args.splits) / f"{split}.parquet",
            Path(args.tokens) / f"{split}.npy",
            download_dir=Path(args.download),
            out_dir=Path(args.out) / split,
            cfg=cfg,
        )
        counts[f"{split}_samples"] = manifest["samples"]
        counts[f"{split}_shards"] = len(manifest["shards"])
        counts[f"{split}_skipped"] = manifest["skipped_total"]
        counts[f"{split}_skipped_by_reason"] = manifest["skipped"]
    write_json(args.counts, counts)
    print(f"{args.dataset}: {counts}")


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad value or a missing file: one line, no traceback
