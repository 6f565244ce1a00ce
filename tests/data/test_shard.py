"""Shards: resized RGB images joined with their tokens; undecodable images skipped and counted;
the pairs grouped by tar through an external sort, the jobs fed to the workers a window at a time."""

import dataclasses
import io
import json
import tarfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.config import build_config
from pipeline.data import shard, sorting
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


def write_inputs(tmp_path, pairs, tokens, row_group_size=None):
    """The split's pairs parquet and token .npy, as the split and tokenize stages leave them."""
    pairs_path, tokens_path = tmp_path / "pairs.parquet", tmp_path / "tokens.npy"
    pairs.to_parquet(pairs_path, index=False, row_group_size=row_group_size)
    np.save(tokens_path, tokens)
    return pairs_path, tokens_path


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
    return pairs, tokens, *write_inputs(tmp_path, pairs, tokens)


def read_samples(out_dir):
    samples = {}
    for path in sorted(out_dir.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, field = member.name.partition(".")
                samples.setdefault(key, {})[field] = tar.extractfile(member).read()
    return samples


def test_shards_hold_resized_images_tokens_and_count_skips(tmp_path):
    pairs, tokens, pairs_path, tokens_path = make_download(tmp_path)
    manifest = shard_split("mscoco", "train", pairs_path, tokens_path, tmp_path / "dl", tmp_path / "out",
                           shard_cfg(image_size=16, samples_per_shard=2))
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
    _, _, pairs_path, tokens_path = make_download(tmp_path)
    args = ("roco", "val", pairs_path, tokens_path, tmp_path / "dl")
    shard_split(*args, tmp_path / "a", shard_cfg(image_size=16, samples_per_shard=4, seed=3))
    shard_split(*args, tmp_path / "b", shard_cfg(image_size=16, samples_per_shard=4, seed=3))
    for name in ["shard-00000-0000.tar", "shard-00000-0001.tar"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    shard_split(*args, tmp_path / "a", shard_cfg(image_size=16, samples_per_shard=10, seed=3))
    assert sorted(p.name for p in (tmp_path / "a").glob("*.tar")) == ["shard-00000-0000.tar"]


def test_a_missing_or_unreadable_download_tar_is_counted_not_fatal(tmp_path):
    pairs, _, pairs_path, tokens_path = make_download(tmp_path)
    (tmp_path / "dl" / "main" / "00000.tar").write_bytes(b"garbage")
    manifest = shard_split("cc12m", "train", pairs_path, tokens_path, tmp_path / "dl", tmp_path / "out",
                           shard_cfg(image_size=16))
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
    manifest = shard_split("cc12m", "train", *write_inputs(tmp_path, pairs, tokens), tmp_path / "dl", tmp_path / "out",
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


def make_scattered_download(tmp_path, tars=7, images_per_tar=4):
    """Download tars of tiny JPEGs and a split ordered by URL, as the split stage writes it: each tar's
    pairs scattered through the file (in row groups of 5), some images with two captions."""
    rng = np.random.default_rng(0)
    (tmp_path / "dl" / "main").mkdir(parents=True)
    rows = []
    for t in range(tars):
        members = {}
        for i in range(images_per_tar):
            key = f"{t:04d}{i:05d}"
            members[f"{key}.jpg"] = noisy_jpeg(8, 8, seed=t * 100 + i)
            url = f"https://x.org/{rng.integers(10**9):09d}/{key}.jpg"
            rows += [(f"main/{t:05d}.tar", key, url, key, index, f"caption {key}.{index}") for index in range(1 + i % 2)]
        write_download_tar(tmp_path / "dl" / "main" / f"{t:05d}.tar", members)
    pairs = pd.DataFrame(rows, columns=["tar", "key", "url", "image_id", "caption_index", "caption"])
    pairs = pairs.sort_values(["url", "caption_index"], ignore_index=True)
    assert not pairs.tar.is_monotonic_increasing  # scattered
    tokens = np.arange(len(pairs) * 9, dtype=np.int32).reshape(len(pairs), 9)
    return pairs, tokens, *write_inputs(tmp_path, pairs, tokens, row_group_size=5)


def shard_files(out_dir):
    return {p.name: p.read_bytes() for p in out_dir.iterdir()}


def test_pairs_are_grouped_by_tar_through_sorted_runs_and_a_merge_level_as_groupby_grouped_them(tmp_path, monkeypatch):
    pairs, tokens, pairs_path, tokens_path = make_scattered_download(tmp_path)
    cfg = shard_cfg(image_size=8, samples_per_shard=3, resize_at="load")
    one_run = shard_split("cc12m", "train", pairs_path, tokens_path, tmp_path / "dl", tmp_path / "one", cfg)

    monkeypatch.setattr(sorting, "RUN_ROWS", 4)  # several runs, of rows from more than one row group
    monkeypatch.setattr(sorting, "MERGE_BATCH_ROWS", 2)  # several row groups per run file
    monkeypatch.setattr(sorting, "MAX_FAN_IN", 3)  # and a merge level before the last merge
    merged, merge_to_file = [], sorting._merge_to_file
    monkeypatch.setattr(sorting, "_merge_to_file", lambda *args: merged.append(args) or merge_to_file(*args))
    jobs, process_tar = [], shard.process_tar
    monkeypatch.setattr(shard, "process_tar", lambda job: jobs.append(job) or process_tar(job))
    streamed = shard_split("cc12m", "train", pairs_path, tokens_path, tmp_path / "dl", tmp_path / "streamed", cfg)

    assert len(merged) >= 2
    assert streamed == one_run and shard_files(tmp_path / "streamed") == shard_files(tmp_path / "one")
    assert len(one_run["shards"]) > 7 and one_run["samples"] == len(pairs) == one_run["pairs_in"]
    # The jobs are those the in-memory grouping made: numbered in tar order, pairs in split order.
    expected = list(enumerate(pairs.groupby("tar", sort=True)))
    assert len(jobs) == len(expected)
    for job, (number, (tar, group)) in zip(jobs, expected):
        assert (job.number, job.source_tar, job.tar_path) == (number, tar, str(tmp_path / "dl" / tar))
        assert job.pairs == list(zip(group.index, group.key, group.url, group.image_id, group.caption_index,
                                     group.caption))
        np.testing.assert_array_equal(job.tokens, tokens[group.index.to_numpy()])


class CollectedLater:
    """A future whose job runs when its result is collected."""

    def __init__(self, pool, fn, job):
        self.pool, self.fn, self.job = pool, fn, job

    def result(self):
        self.pool.in_flight -= 1
        return self.fn(self.job)


class CountingPool:
    """A ProcessPoolExecutor stand-in that counts the jobs submitted and not yet collected."""

    most_in_flight = 0

    def __init__(self, max_workers, initializer):
        self.in_flight = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, job):
        self.in_flight += 1
        CountingPool.most_in_flight = max(CountingPool.most_in_flight, self.in_flight)
        return CollectedLater(self, fn, job)


def test_the_pool_is_fed_a_bounded_window_of_jobs_and_results_keep_job_order(tmp_path, monkeypatch):
    _, _, pairs_path, tokens_path = make_scattered_download(tmp_path, tars=9)
    args = ("cc12m", "train", pairs_path, tokens_path, tmp_path / "dl")
    in_process = shard_split(*args, tmp_path / "here", shard_cfg(image_size=8, samples_per_shard=3))
    monkeypatch.setattr(shard, "ProcessPoolExecutor", CountingPool)
    monkeypatch.setattr(CountingPool, "most_in_flight", 0)
    pooled = shard_split(*args, tmp_path / "pool", shard_cfg(image_size=8, samples_per_shard=3, workers=2))
    assert CountingPool.most_in_flight == shard.JOBS_IN_FLIGHT_PER_WORKER * 2 < 9
    assert pooled == in_process and shard_files(tmp_path / "pool") == shard_files(tmp_path / "here")


@pytest.mark.slow
def test_worker_processes_write_the_same_shards_as_one_process(tmp_path):
    _, _, pairs_path, tokens_path = make_scattered_download(tmp_path)
    args = ("cc12m", "train", pairs_path, tokens_path, tmp_path / "dl")
    in_process = shard_split(*args, tmp_path / "here", shard_cfg(image_size=8, samples_per_shard=3))
    pooled = shard_split(*args, tmp_path / "pool", shard_cfg(image_size=8, samples_per_shard=3, workers=2))
    assert pooled == in_process and shard_files(tmp_path / "pool") == shard_files(tmp_path / "here")


def test_pairs_and_token_rows_must_be_as_many(tmp_path):
    pairs, tokens, pairs_path, tokens_path = make_download(tmp_path)
    np.save(tokens_path, tokens[:-1])
    with pytest.raises(ValueError, match=f"{len(pairs)} pairs .* but {len(pairs) - 1} token rows"):
        shard_split("cc12m", "train", pairs_path, tokens_path, tmp_path / "dl", tmp_path / "out", shard_cfg())


def test_an_empty_split_gives_an_empty_manifest(tmp_path):
    from pipeline.data.split import PAIR_COLUMNS

    pairs_path, tokens_path = tmp_path / "pairs.parquet", tmp_path / "tokens.npy"
    pd.DataFrame([], columns=PAIR_COLUMNS).to_parquet(pairs_path, index=False)  # as the split stage writes it
    assert pq.read_schema(pairs_path).field("tar").type == "null"
    np.save(tokens_path, np.zeros((0, 9), dtype=np.int32))
    manifest = shard_split("roco", "val", pairs_path, tokens_path, tmp_path / "dl", tmp_path / "out", shard_cfg())
    assert (manifest["samples"], manifest["pairs_in"], manifest["shards"], manifest["context_length"]) == (0, 0, [], 8)


def test_the_sort_scratch_folder_is_removed_after_a_failure_and_a_killed_run_s_is_cleared(tmp_path, monkeypatch):
    _, _, pairs_path, tokens_path = make_download(tmp_path)
    args = ("cc12m", "train", pairs_path, tokens_path, tmp_path / "dl", tmp_path / "out", shard_cfg(image_size=16))
    left = tmp_path / "out" / f"{shard.SCRATCH_PREFIX}killed"
    (left / "run-00000.parquet").parent.mkdir(parents=True)
    (left / "run-00000.parquet").write_bytes(b"a killed run's")

    def fail(job):
        assert len(list((tmp_path / "out").glob(f"{shard.SCRATCH_PREFIX}*/run-*.parquet"))) == 1  # this run's
        raise RuntimeError("a worker failed")

    monkeypatch.setattr(shard, "process_tar", fail)
    with pytest.raises(RuntimeError, match="a worker failed"):
        shard_split(*args)
    assert list((tmp_path / "out").iterdir()) == []
