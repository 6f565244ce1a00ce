"""Splits: deterministic by URL hash, the 95/5 proportion, official splits, one row per caption."""

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import build_config
from pipeline.data import sorting
from pipeline.data import split as split_module
from pipeline.data.demo import generate_demo
from pipeline.data.download import SAMPLE_COLUMNS, download, samples_by_url
from pipeline.data.sources import read_source
from pipeline.data.split import SPLITS, make_splits, url_fraction, write_splits
from pipeline.names import DATASETS


def samples(n, split=""):
    return pd.DataFrame(
        {
            "tar": ["main/00000.tar"] * n,
            "key": [f"{i:09d}" for i in range(n)],
            "url": [f"https://example.com/img/{i}.jpg" for i in range(n)],
            "caption": [f"caption {i}" for i in range(n)],
            "captions": [json.dumps([f"caption {i}"]) for i in range(n)],
            "image_id": [str(i) for i in range(n)],
            "split": [split] * n,
        }
    )


def test_cc12m_split_is_95_5_and_independent_of_order():
    frame = samples(20000)
    splits, counts = make_splits("cc12m", frame, 0.05, "salt")
    assert counts["train_images"] + counts["val_images"] == 20000
    assert counts["val_images"] / 20000 == pytest.approx(0.05, abs=0.006)
    shuffled, _ = make_splits("cc12m", frame.sample(frac=1.0, random_state=1), 0.05, "salt")
    for split in ("train", "val"):
        pd.testing.assert_frame_equal(splits[split], shuffled[split])


def test_a_urls_split_never_changes_when_other_rows_come_and_go():
    frame = samples(3000)
    full, _ = make_splits("cc12m", frame, 0.05, "salt")
    partial, _ = make_splits("cc12m", frame.iloc[::3], 0.05, "salt")  # e.g. a download that got fewer rows
    assert set(partial["val"].url) == set(full["val"].url) & set(frame.iloc[::3].url)


def test_salt_changes_the_assignment_and_fraction_is_uniform():
    assert url_fraction("u", "a") != url_fraction("u", "b")
    values = [url_fraction(f"u{i}", "s") for i in range(5000)]
    assert 0 <= min(values) and max(values) < 1
    assert sum(v < 0.5 for v in values) == pytest.approx(2500, abs=150)


def test_official_splits_map_to_train_and_val_and_drop_test():
    coco = pd.concat([samples(4, "train"), samples(2, "val")], ignore_index=True)
    coco["url"] = [f"u{i}" for i in range(6)]
    _, counts = make_splits("mscoco", coco, 0.05, "salt")
    assert (counts["train_images"], counts["val_images"]) == (4, 2)
    roco = pd.concat([samples(3, "train"), samples(2, "valid"), samples(1, "test")], ignore_index=True)
    roco["url"] = [f"r{i}" for i in range(6)]
    _, counts = make_splits("roco", roco, 0.05, "salt")
    assert (counts["train_images"], counts["val_images"], counts["images_unused"]) == (3, 2, 1)
    flickr = pd.concat([samples(3, "train"), samples(1, "val"), samples(2, "test")], ignore_index=True)
    flickr["url"] = [f"f{i}" for i in range(6)]
    _, counts = make_splits("flickr30k", flickr, 0.05, "salt")
    assert (counts["train_images"], counts["val_images"], counts["images_unused"]) == (3, 1, 2)


def test_multi_caption_images_become_one_pair_per_caption():
    frame = samples(2, "train")
    frame["captions"] = [json.dumps(["a", "b", "c", "d", "e"]), json.dumps(["f", "g", "h", "i", "j"])]
    splits, counts = make_splits("mscoco", frame, 0.05, "salt")
    assert counts["train_pairs"] == 10
    pairs = splits["train"]
    assert list(pairs.caption) == list("abcdefghij")
    assert list(pairs.caption_index) == [0, 1, 2, 3, 4] * 2
    assert pairs.groupby("image_id").size().tolist() == [5, 5]


def test_local_copies_split_by_file_name_wherever_the_checkout_lives():
    a = samples(400)
    b = a.copy()
    a["url"] = [f"file:///home/alice/grr-coca/data/raw/demo/cc12m/images/{i:06d}.jpg" for i in range(400)]
    b["url"] = [f"file:///tmp/ci/clone/data/raw/demo/cc12m/images/{i:06d}.jpg" for i in range(400)]
    split_a, _ = make_splits("cc12m", a, 0.05, "salt")
    split_b, _ = make_splits("cc12m", b, 0.05, "salt")
    assert list(split_a["val"].key) == list(split_b["val"].key) and len(split_a["val"]) > 0


@pytest.mark.slow
def test_streamed_splits_are_the_in_memory_splits_byte_for_byte_on_the_demo(tmp_path, monkeypatch):
    """The stage streams (samples sorted by URL through run files, pairs written a chunk at a time);
    on the smoke demo, downloaded by img2dataset with several shards and a retry pass, it writes the
    bytes make_splits' frames wrote with to_parquet, and with tiny runs and chunks the same rows."""
    monkeypatch.chdir(tmp_path)
    cfg = build_config({"preset": "smoke"})
    generate_demo(cfg.data.demo, Path("data/raw/demo"))
    download_cfg = replace(cfg.data.download, number_sample_per_shard=16, retry_failed_passes=1)
    split_cfg = cfg.data.split
    for dataset in DATASETS:
        folder = Path("download") / dataset
        download(dataset, read_source(dataset, cfg.data.sources), folder, download_cfg)
        assert (folder / "retry-01").is_dir()  # the planted bad rows fail, and are retried

        old = Path("old") / dataset  # what the stage wrote before it streamed
        old.mkdir(parents=True)
        samples = pd.DataFrame(list(samples_by_url(folder, Path("scratch-old") / dataset)), columns=SAMPLE_COLUMNS)
        frames, old_counts = make_splits(dataset, samples, split_cfg.cc12m_val_fraction,
                                         split_cfg.hash_salt)
        for split, pairs in frames.items():
            pairs.to_parquet(old / f"{split}.parquet", index=False)

        new = Path("new") / dataset
        new.mkdir(parents=True)
        counts = write_splits(dataset, samples_by_url(folder, Path("scratch") / dataset), new,
                              split_cfg.cc12m_val_fraction, split_cfg.hash_salt)
        assert counts == old_counts and list(counts) == list(old_counts)  # the metrics file's order too
        for split in SPLITS:
            assert (new / f"{split}.parquet").read_bytes() == (old / f"{split}.parquet").read_bytes(), (dataset, split)

        with monkeypatch.context() as tiny:  # many runs to merge, many chunks to write
            tiny.setattr(sorting, "RUN_ROWS", 7)
            tiny.setattr(sorting, "MERGE_BATCH_ROWS", 3)
            tiny.setattr(sorting, "MAX_FAN_IN", 2)  # runs merged into longer runs first, over levels
            tiny.setattr(split_module, "CHUNK_ROWS", 5)
            chunked = Path("chunked") / dataset
            chunked.mkdir(parents=True)
            assert write_splits(dataset, samples_by_url(folder, Path("scratch-tiny") / dataset), chunked,
                                split_cfg.cc12m_val_fraction, split_cfg.hash_salt) == old_counts
        for split in SPLITS:
            pd.testing.assert_frame_equal(pd.read_parquet(chunked / f"{split}.parquet"),
                                          pd.read_parquet(old / f"{split}.parquet"))
