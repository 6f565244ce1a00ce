"""Train/validation splits, one row per (image, caption) pair.

- CC12M: a random 95/5 split, but "random" by a hash of the URL, so a sample's split never changes
  across reruns, download order or retries.
- MSCOCO: the official train2017/val2017 split, carried in the annotation files.
- Flickr30K: Karpathy's split (train and val; its test images are not used by the paper).
- ROCO v2: the official train and validation splits (`valid` in the release, `val` here).
Every dataset comes out with the same two split names, `train` and `val`.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd

SPLITS = ("train", "val")

# Source split names mapped to ours; anything not listed (Flickr30K and ROCO `test`) is dropped.
SOURCE_SPLITS = {
    "mscoco": {"train": "train", "val": "val"},
    "flickr30k": {"train": "train", "val": "val"},
    "roco": {"train": "train", "valid": "val"},
}

PAIR_COLUMNS = ["tar", "key", "url", "image_id", "caption_index", "caption"]


def split_key(url: str) -> str:
    """What identifies a sample for its split: its URL, or for a local `file://` copy its file name,
    so that where a checkout (and so the demo's generated images) lives never changes the split."""
    return url.rsplit("/", 1)[-1] if url.startswith("file://") else url


def url_fraction(url: str, salt: str) -> float:
    """A number in [0, 1) that depends only on the salt and the URL's split key."""
    digest = hashlib.sha256(f"{salt}\0{split_key(url)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(dataset: str, samples: pd.DataFrame, val_fraction: float, salt: str) -> pd.Series:
    """Our split name for each downloaded image (None where the image belongs to no split we use)."""
    if dataset == "cc12m":
        return samples["url"].map(lambda u: "val" if url_fraction(u, salt) < val_fraction else "train")
    mapping = SOURCE_SPLITS[dataset]
    return samples["split"].map(lambda s: mapping.get(s))


def explode_pairs(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per (image, caption): MSCOCO and Flickr30K have about five captions per image."""
    rows = []
    for sample in samples.itertuples(index=False):
        captions = json.loads(sample.captions) if isinstance(sample.captions, str) and sample.captions else []
        if not captions:
            captions = [sample.caption]
        for index, caption in enumerate(captions):
            rows.append((sample.tar, sample.key, sample.url, str(sample.image_id), index, caption))
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def make_splits(dataset: str, samples: pd.DataFrame, val_fraction: float, salt: str):
    """Split the downloaded images of one dataset (`val_fraction`, `salt`: data.split's CC12M settings);
    returns ({split: pairs frame}, counts)."""
    samples = samples.sort_values("url", kind="stable").reset_index(drop=True)
    assigned = assign_splits(dataset, samples, val_fraction, salt)
    out, counts = {}, {"images_unused": int(assigned.isna().sum())}
    for split in SPLITS:
        images = samples[assigned == split]
        pairs = explode_pairs(images)
        out[split] = pairs
        counts[f"{split}_images"] = len(images)
        counts[f"{split}_pairs"] = len(pairs)
    return out, counts
