"""Splits: deterministic by URL hash, the 95/5 proportion, official splits, one row per caption."""

import json

import pandas as pd
import pytest

from pipeline.data.split import make_splits, url_fraction


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
