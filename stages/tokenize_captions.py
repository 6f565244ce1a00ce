"""DVC stage `tokenize`: build the tokenizer and encode every split's captions.

The paper preset loads `t5-base` and adds BOS and CLS; the demo trains a small tokenizer with the
same layout on the training captions of all datasets. (Named tokenize_captions.py because a script
called tokenize.py would shadow Python's own `tokenize` module.)
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.checks import exit_on_user_error  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.names import DATASETS  # noqa: E402
from pipeline.data.split import SPLITS  # noqa: E402
from pipeline.data.tokenizer import build_tokenizer, encode_split, split_captions  # noqa: E402
from pipeline.io import write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--splits", required=True, help="folder holding <dataset>/<split>.parquet")
    parser.add_argument("--tokenizer-out", required=True, help="folder for the saved tokenizer")
    parser.add_argument("--tokens-out", required=True, help="folder for <dataset>/<split>.npy")
    parser.add_argument("--counts", required=True, help="metrics JSON")
    args = parser.parse_args()

    cfg = load_config(args.params).data.tokenizer

    # Read only for a tokenizer trained here (the paper's t5-base is loaded, not trained), a row group
    # at a time: the trainer counts words as they stream by, so memory does not grow with the captions.
    training_captions = (batch for d in DATASETS for batch in split_captions(Path(args.splits) / d / "train.parquet")) \
        if cfg.name == "train" else ()
    tokenizer = build_tokenizer(cfg.name, cfg.vocab_size, training_captions)
    tokenizer.save_pretrained(args.tokenizer_out)

    counts = {"vocab_size": len(tokenizer), "context_length": cfg.context_length}
    for dataset in DATASETS:
        for split in SPLITS:
            out = Path(args.tokens_out) / dataset
            out.mkdir(parents=True, exist_ok=True)
            rows, truncated = encode_split(tokenizer, Path(args.splits) / dataset / f"{split}.parquet",
                                           out / f"{split}.npy", cfg.context_length, cfg.batch_size)
            counts[f"{dataset}_{split}_captions"] = rows
            counts[f"{dataset}_{split}_truncated"] = truncated
    write_json(args.counts, counts)
    print(f"tokenizer with {len(tokenizer)} entries; {counts}")


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad value or a missing file: one line, no traceback
