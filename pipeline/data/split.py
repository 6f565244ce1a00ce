"""Train/validation splits, one row per (image, caption) pair.

- CC12M: a random 95/5 split, but "random" by a hash of the URL, so a sample's split never changes
  across reruns, download order or retries.
- MSCOCO: the official train2017/val2017 split, carried in the annotation files.
- Flickr30K: Karpathy's split (train and val; its test images are not used by the paper).
- ROCO v2: the official train and validation splits (`valid` in the release, `val` here).
Every dataset comes out with the same two split names, `train` and `val`.

Pairs are ordered by URL (then caption index): the token rows, the shard stage's seeded shuffle and
the demo tokenizer's training all follow this order. The stage streams (write_splits over
download.samples_by_url): the samples are sorted by URL through sorted runs on disk
(pipeline/data/sorting.py) and each split's pairs are written CHUNK_ROWS at a time, so its memory
grows far more slowly than the rows (it grew by about 2 kB a row when it held the samples and the
pairs in pandas: 2.3 GB at a million rows; see benchmarks/split_memory.py). make_splits is the same
rule for a frame already in memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "val")

# Source split names mapped to ours; anything not listed (Flickr30K and ROCO `test`) is dropped.
SOURCE_SPLITS = {
    "mscoco": {"train": "train", "val": "val"},
    "flickr30k": {"train": "train", "val": "val"},
    "roco": {"train": "train", "valid": "val"},
}

PAIR_COLUMNS = ["tar", "key", "url", "image_id", "caption_index", "caption"]
CHUNK_ROWS = 16_384  # pairs held per split before they are written (a parquet row group)


def split_key(url: str) -> str:
    """What identifies a sample for its split: its URL, or for a local `file://` copy its file name,
    so that where a checkout (and so the demo's generated images) lives never changes the split."""
    return url.rsplit("/", 1)[-1] if url.startswith("file://") else url


def url_fraction(url: str, salt: str) -> float:
    """A number in [0, 1) that depends only on the salt and the URL's split key."""
    digest = hashlib.sha256(f"{salt}\0{split_key(url)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(dataset: str, url: str, source_split: str, val_fraction: float, salt: str) -> str | None:
    """Our split name for one downloaded image (None where it belongs to no split we use)."""
    if dataset == "cc12m":
        return "val" if url_fraction(url, salt) < val_fraction else "train"
    return SOURCE_SPLITS[dataset].get(source_split)


def pairs_of(sample: dict) -> list[tuple]:
    """One row per (image, caption) of a sample (a dict with SAMPLE_COLUMNS): MSCOCO and Flickr30K
    have about five captions per image."""
    captions = json.loads(sample["captions"]) if isinstance(sample["captions"], str) and sample["captions"] else []
    if not captions:
        captions = [sample["caption"]]
    return [(sample["tar"], sample["key"], sample["url"], str(sample["image_id"]), index, caption)
            for index, caption in enumerate(captions)]


def make_splits(dataset: str, samples: pd.DataFrame, val_fraction: float, salt: str):
    """Split the downloaded images of one dataset held in memory (`val_fraction`, `salt`: data.split's
    CC12M settings); returns ({split: pairs frame}, counts). The stage streams instead (write_splits);
    this is the same rule for a frame at hand."""
    rows: dict[str, list[tuple]] = {split: [] for split in SPLITS}
    counts = _split_into(dataset, samples.sort_values("url", kind="stable").to_dict("records"),
                         {split: rows[split].extend for split in SPLITS}, val_fraction, salt)
    return {split: pd.DataFrame(rows[split], columns=PAIR_COLUMNS) for split in SPLITS}, counts


def _split_into(dataset: str, samples: Iterable[dict], add: dict, val_fraction: float, salt: str) -> dict:
    """The rule, once: each sample (sorted by URL) goes to its split's `add` as its pairs; the counts."""
    counts = {"images_unused": 0, **{f"{split}_{what}": 0 for split in SPLITS for what in ("images", "pairs")}}
    for sample in samples:
        split = split_of(dataset, sample["url"], sample["split"], val_fraction, salt)
        if split is None:
            counts["images_unused"] += 1
            continue
        pairs = pairs_of(sample)
        add[split](pairs)
        counts[f"{split}_images"] += 1
        counts[f"{split}_pairs"] += len(pairs)
    return counts


def write_splits(dataset: str, samples: Iterable[dict], out_dir: Path, val_fraction: float, salt: str) -> dict:
    """Write `<split>.parquet` under `out_dir` from `samples` already sorted by URL (a stream, e.g.
    download.samples_by_url), CHUNK_ROWS pairs at a time, so memory does not grow with the dataset;
    returns the counts. Same rows, order and bytes as make_splits' frames written with to_parquet, up
    to CHUNK_ROWS pairs per split; a bigger split is cut into row groups of CHUNK_ROWS (the same rows)."""
    files = {split: _PairsFile(out_dir / f"{split}.parquet") for split in SPLITS}
    counts = _split_into(dataset, samples, {split: files[split].add for split in SPLITS}, val_fraction, salt)
    for file in files.values():
        file.close()
    return counts


class _PairsFile:
    """One split's pairs parquet, written a chunk at a time with the schema (pandas metadata included)
    that DataFrame.to_parquet gives, so that a split of one chunk is byte for byte what it wrote."""

    def __init__(self, path: Path):
        self.path, self.rows, self.writer = path, [], None

    def add(self, rows: list[tuple]) -> None:
        self.rows.extend(rows)
        if len(self.rows) >= CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pandas(pd.DataFrame(self.rows, columns=PAIR_COLUMNS), preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="snappy")
        self.writer.write_table(table)
        self.rows = []

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
        else:  # no pairs: the empty frame as to_parquet always wrote it (columns of Arrow type null)
            pd.DataFrame([], columns=PAIR_COLUMNS).to_parquet(self.path, index=False)
