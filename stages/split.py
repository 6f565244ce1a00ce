"""DVC stage `split@<dataset>`: train/val pairs of the downloaded images (see pipeline.data.split)."""

import argparse
from pathlib import Path

from pipeline.config import DATASETS, load_config
from pipeline.data.download import successful_samples
from pipeline.data.split import make_splits
from pipeline.io import write_json


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
    main()
