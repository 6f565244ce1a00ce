"""Shards: resized RGB images joined with their tokens; undecodable images skipped and counted."""

import dataclasses
import io
import json
import tarfile

import numpy as np
import torch
import pandas as pd
from PIL import Image

from pipeline.config import build_config
from pipeline.data.shard import shard_split


def shard_cfg(**changes):
    """The smoke preset's data.shard section with some values changed (checked like any section)."""
    return dataclasses.replace(build_config({"preset": "smoke"}).data.shard, **changes)


def jpeg(size, color, mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_download_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_download(tmp_path):
    """A tar shaped like img2dataset's output: 3 good images (one grayscale), 1 truncated, 1 not an image."""
    (tmp_path / "dl" / "main").mkdir(parents=True)
    good = jpeg((40, 30), (255, 0, 0))
    write_download_tar(
        tmp_path / "dl" / "main" / "00000.tar",
        {
            "000000000.jpg": good,
            "000000000.txt": b"red",
            "000000001.jpg": jpeg((20, 50), (0, 0, 255)),
            "000000002.jpg": jpeg((33, 33), 128, mode="L"),
            "000000003.jpg": good[:200],
            "000000004.jpg": b"this is not an image",
        },
    )
    rows = []
    for key, captions in [(0, ["r1", "r2"]), (1, ["b1"]), (2, ["g1", "g2", "g3"]), (3, ["t1"]), (4, ["x1", "x2"])]:
        for index, caption in enumerate(captions):
            rows.append(("main/00000.tar", f"{key:09d}", f"file:///img/{key}.jpg", str(key), index, caption))
    pairs = pd.DataFrame(rows, columns=["tar", "key", "url", "image_id", "caption_index", "caption"])
    tokens = np.arange(len(pairs) * 9, dtype=np.int32).reshape(len(pairs), 9)
    return pairs, tokens


def read_samples(out_dir):
    samples = {}
    for shard in sorted(out_dir.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, field = member.name.partition(".")
                samples.setdefault(key, {})[field] = tar.extractfile(member).read()
    return samples


def test_shards_hold_resized_images_tokens_and_count_skips(tmp_path):
    pairs, tokens = make_download(tmp_path)
    manifest = shard_split(
        "mscoco", "train", pairs, tokens, tmp_path / "dl", tmp_path / "out", shard_cfg(image_size=16, samples_per_shard=2)
    )
    assert manifest["samples"] == 6  # 2 + 1 + 3 pairs of the three good images
    assert manifest["skipped_total"] == 3  # the truncated image's 1 pair, the non-image's 2 pairs
    assert sum(n for reason, n in manifest["skipped"].items() if reason.startswith("undecodable")) == 2
    assert manifest["skipped"]["pair of a skipped image"] == 1
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 2]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest

    samples = read_samples(tmp_path / "out")
    assert len(samples) == 6
    for fields in samples.values():
        assert set(fields) == {"jpg", "tokens.npy", "txt", "json"}
        image = Image.open(io.BytesIO(fields["jpg"]))
        assert image.size == (16, 16) and image.mode == "RGB"
        meta = json.loads(fields["json"])
        row = pairs[(pairs.image_id == meta["image_id"]) & (pairs.caption_index == meta["caption_index"])]
        assert fields["txt"].decode() == row.caption.item()
        np.testing.assert_array_equal(np.load(io.BytesIO(fields["tokens.npy"])), tokens[row.index.item()])


def test_sharding_is_reproducible_and_a_rerun_replaces_old_shards(tmp_path):
    pairs, tokens = make_download(tmp_path)
    args = ("roco", "val", pairs, tokens, tmp_path / "dl")
    shard_split(*args, tmp_path / "a", shard_cfg(image_size=16, samples_per_shard=4, seed=3))
    shard_split(*args, tmp_path / "b", shard_cfg(image_size=16, samples_per_shard=4, seed=3))
    for name in ["shard-00000-0000.tar", "shard-00000-0001.tar"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    shard_split(*args, tmp_path / "a", shard_cfg(image_size=16, samples_per_shard=10, seed=3))
    assert sorted(p.name for p in (tmp_path / "a").glob("*.tar")) == ["shard-00000-0000.tar"]


def test_a_missing_or_unreadable_download_tar_is_counted_not_fatal(tmp_path):
    pairs, tokens = make_download(tmp_path)
    (tmp_path / "dl" / "main" / "00000.tar").write_bytes(b"garbage")
    manifest = shard_split("cc12m", "train", pairs, tokens, tmp_path / "dl", tmp_path / "out", shard_cfg(image_size=16))
    assert manifest["samples"] == 0 and manifest["skipped_total"] == len(pairs)


def noisy_jpeg(width, height, seed=0):
    """A JPEG of noise: its first half holds the whole header but not the pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_load_shards_hold_the_downloaded_files_as_they_are_and_skip_what_is_no_image(tmp_path):
    (tmp_path / "dl").mkdir()
    png = io.BytesIO()
    Image.new("RGB", (20, 50), (0, 0, 255)).save(png, format="PNG")
    truncated = noisy_jpeg(40, 30, seed=1)[:700]  # a good header: counted by the loader, not here
    files = {"000000000.jpg": noisy_jpeg(40, 30), "000000001.png": png.getvalue(),
             "000000002.jpg": b"this is not an image", "000000003.jpg": truncated}
    write_download_tar(tmp_path / "dl" / "00000.tar", files)
    rows = [("00000.tar", f"{key:09d}", f"file:///img/{key}", str(key), index, f"c{key}.{index}")
            for key, captions in enumerate([2, 1, 2, 1]) for index in range(captions)]
    pairs = pd.DataFrame(rows, columns=["tar", "key", "url", "image_id", "caption_index", "caption"])
    tokens = np.zeros((len(pairs), 9), dtype=np.int32)
    manifest = shard_split("cc12m", "train", pairs, tokens, tmp_path / "dl", tmp_path / "out",
                           shard_cfg(image_size=16, resize_at="load"))

    assert (manifest["resize_at"], manifest["image_size"], manifest["resize_mode"]) == ("load", 16, "naive")
    assert manifest["samples"] == 4  # 2 + 1 pairs of the good images, 1 of the truncated one
    assert manifest["skipped"] == {"undecodable image: UnidentifiedImageError": 1, "pair of a skipped image": 1}
    stored = {}
    for fields in read_samples(tmp_path / "out").values():
        (image_field,) = set(fields) - {"tokens.npy", "txt", "json"}
        stored[json.loads(fields["json"])["source"], image_field] = fields[image_field]
    assert stored == {("00000.tar:000000000", "jpg"): files["000000000.jpg"],  # byte for byte
                      ("00000.tar:000000001", "png"): files["000000001.png"],
                      ("00000.tar:000000003", "jpg"): truncated}
    from pipeline.data.loader import ValLoader  # the loaders read every image field, PNG included
    val = ValLoader(tmp_path / "out", batch_size=8)
    pixels = torch.cat([b.pixels for b in val])
    assert pixels.shape == (3, 3, 16, 16) and val.corrupt == 1  # 2 pairs of the JPEG, 1 of the PNG
    assert sum(bool((image[2] == 255).all() and (image[:2] == 0).all()) for image in pixels) == 1  # the blue PNG
