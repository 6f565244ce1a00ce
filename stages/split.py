"""DVC stage `split@<dataset>`: train/val pairs of the downloaded images (see pipeline.data.split)."""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.checks import exit_on_user_error  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.names import DATASETS  # noqa: E402
from pipeline.data.download import successful_samples  # noqa: E402
from pipeline.data.split import make_splits  # noqa: E402
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
    samples = successful_samples(Path(args.download))
    splits, counts = make_splits(args.dataset, samples, cfg.cc12m_val_fraction, cfg.hash_salt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, pairs in splits.items():
        pairs.to_parquet(out / f"{split}.parquet", index=False)
    write_json(args.counts, {"dataset": args.dataset, **counts})
    print(f"{args.dataset}: {counts}")


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad value or a missing file: one line, no traceback
