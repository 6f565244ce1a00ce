"""Training shards: images joined with their token ids, as webdataset tars.

Each (image, caption) pair of a split becomes one sample:

    <key>.jpg         the image, by data.shard.resize_at (recorded in the manifest):
                        shard: RGB, made image_size x image_size by pipeline/data/preprocess.py, JPEG
                        load:  the downloaded file's bytes as they are (<key>.png or .webp if it is one);
                               the loader makes the square (pipeline/data/loader.py's decode_sample)
    <key>.tokens.npy  int32 token ids, context_length + 1 of them (see pipeline.data.tokenizer)
    <key>.txt         the raw caption
    <key>.json        where it came from: dataset, split, image_id, caption_index, url, source tar/key

An image that cannot be decoded is skipped and counted, never fatal. With resize_at shard, the images
of one downloaded tar are decoded and resized once (in a worker process), however many captions they
have. With resize_at load nothing is decoded here, which is most of this stage's CPU: only the header
is read (probe_image), so bytes that are no image are skipped and counted here, and an image whose
pixels are corrupt behind a good header is skipped and counted by the loader. img2dataset decoded and
re-encoded every file it saved (pipeline/data/download.py), so those are rare. The pairs are then
shuffled with a seed and cut into shards (the loader shuffles again across shards), so the five
captions of a COCO image rarely meet in one batch.

Memory does not grow with the split. The parent process never holds the split's pairs or token rows:
it reads the pairs parquet a row group at a time with the matching token rows, sorts them by (tar, row)
through run files on disk (pipeline/data/sorting.py; a scratch folder under the split's out_dir,
removed at the end), and makes one tar's job at a time from the merged stream as the worker pool takes
it, with at most JOBS_IN_FLIGHT_PER_WORKER jobs per worker submitted and not yet collected. So it holds
a sort run (RUN_ROWS rows) or a merge's few rows per run, plus the jobs in flight (a tar's pairs and
token rows each: up to data.download.number_sample_per_shard images' captions). A worker holds one
tar's stored images (process_tar).
"""

from __future__ import annotations

import collections
import functools
import io
import itertools
import json
import random
import shutil
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.checks import UserError
from pipeline.data.parquet import row_groups
from pipeline.data.preprocess import decode_image, encode_jpeg, prepare_image, probe_image
from pipeline.data.sorting import grouped, merge_runs, sort_to_runs
from pipeline.data.split import PAIR_COLUMNS
from pipeline.io import atomic_write, write_json


class ShardInputError(UserError, ValueError):
    """A split's pairs or token file that the shard stage cannot use (the stage reports it in one line)."""


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # of a downloaded image
JOBS_IN_FLIGHT_PER_WORKER = 2  # enough to keep every worker busy while a finished job's result is collected
SCRATCH_PREFIX = ".pairs-by-tar-"  # the sort's scratch folder under a split's out_dir, removed at the end


@dataclass(frozen=True)
class ShardJob:
    """The pairs whose images are in one downloaded tar."""

    dataset: str
    split: str
    tar_path: str
    pairs: list[tuple[int, str, str, str, int, str]]  # (row, key, url, image_id, caption_index, caption)
    tokens: np.ndarray  # [len(pairs), context_length + 1]
    source_tar: str
    number: int  # this tar's place among the split's tars; names its shards
    out_dir: Path
    image_size: int
    resize_mode: str
    resize_at: str
    jpeg_quality: int
    samples_per_shard: int
    seed: int


Stored = tuple[str, bytes]  # a sample's image: (field, one of pipeline.names.IMAGE_FIELDS; bytes)


def stored_image(raw: bytes, ext: str, *, resize_at: str, image_size: int, resize_mode: str,
                 jpeg_quality: int) -> Stored:
    """What a sample stores of a downloaded image file (extension `ext`); raises if it is unusable.
    shard: the model's square as JPEG. load: the file itself, once its header reads as an image."""
    if resize_at == "load":
        probe_image(raw)
        return ("jpg" if ext == "jpeg" else ext), raw
    return "jpg", encode_jpeg(prepare_image(decode_image(raw), image_size, resize_mode), jpeg_quality)


def read_tar_images(tar_path: str, keys: set[str],
                    store: Callable[[bytes, str], Stored]) -> tuple[dict[str, Stored | str], str]:
    """The wanted images of one downloaded tar, each passed through `store` as soon as it is read
    (what to store, or the reason it is unusable), and why the keys not in the result are missing.
    One source image is held at a time, beside what `store` made of the others: a download tar holds
    up to data.download.number_sample_per_shard of them (10,000 in the presets: 0.4 GB at 40 kB a JPEG,
    all of which resize_at load keeps)."""
    images: dict[str, Stored | str] = {}
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                stem, _, ext = member.name.rpartition(".")
                if stem in keys and f".{ext.lower()}" in IMAGE_EXTENSIONS and member.isfile():
                    raw = tar.extractfile(member).read()
                    try:
                        images[stem] = store(raw, ext.lower())
                    except Exception as e:  # noqa: BLE001 - any decoder failure means: skip and count
                        images[stem] = f"undecodable image: {type(e).__name__}"
    except (OSError, tarfile.TarError) as e:  # a truncated or corrupt tar: keep what was read before
        return images, f"unreadable tar: {type(e).__name__}"
    return images, "image missing from tar"


def one_torch_thread() -> None:
    """A forked worker's first act: one torch thread. The stage's parallelism is its processes, and a
    worker forked after the parent ran torch ops (a one-tar split is resized in-process) would hang in
    the inherited OpenMP thread pool on its first multi-threaded op (as DataLoader workers also do)."""
    torch.set_num_threads(1)


def process_tar(job: ShardJob) -> tuple[list[dict], Counter]:
    """Store one tar's images (resized, or as they are), shuffle its pairs and write them as shards.

    Runs in a worker process; holds one downloaded tar's stored images in memory at a time (and one
    source image), whatever the dataset's size.
    Returns the manifest entries of the shards written and the skip counts.
    """
    keys = {pair[1] for pair in job.pairs}
    store = functools.partial(stored_image, resize_at=job.resize_at, image_size=job.image_size,
                              resize_mode=job.resize_mode, jpeg_quality=job.jpeg_quality)
    stored, missing_reason = read_tar_images(job.tar_path, keys, store)
    skipped: Counter = Counter()  # one count per skipped pair, under the reason of its image
    counted: set[str] = set()  # the skipped images whose reason is counted (on their first pair)
    samples = []
    for (row, key, url, image_id, caption_index, caption), tokens in zip(job.pairs, job.tokens):
        image = stored.get(key)
        if not isinstance(image, tuple):
            skipped["pair of a skipped image" if key in counted else image or missing_reason] += 1
            counted.add(key)
            continue
        meta = {
            "dataset": job.dataset,
            "split": job.split,
            "image_id": image_id,
            "caption_index": int(caption_index),
            "url": url,
            "source": f"{job.source_tar}:{key}",
        }
        buffer = io.BytesIO()
        np.save(buffer, tokens.astype(np.int32))
        field, data = image
        fields = {
            field: data,
            "tokens.npy": buffer.getvalue(),
            "txt": caption.encode(),
            "json": json.dumps(meta, sort_keys=True).encode(),
        }
        samples.append(fields)
    random.Random(f"{job.seed}:{job.source_tar}").shuffle(samples)

    shards = []
    for chunk_number, start in enumerate(range(0, len(samples), job.samples_per_shard)):
        chunk = samples[start : start + job.samples_per_shard]
        name = f"shard-{job.number:05d}-{chunk_number:04d}.tar"
        prefix = f"{job.dataset}-{job.split}-{job.number:05d}"
        write_tar(job.out_dir / name, [(f"{prefix}-{start + i:07d}", fields) for i, fields in enumerate(chunk)])
        shards.append({"file": name, "samples": len(chunk)})
    return shards, skipped


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """Write atomically, with fixed metadata so that the same samples give the same bytes."""
    def write(f) -> None:
        with tarfile.open(fileobj=f, mode="w") as tar:
            for key, fields in samples:
                for ext, data in fields.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: reproducible bytes
                    tar.addfile(info, io.BytesIO(data))

    atomic_write(path, write)


def shard_split(
    dataset: str,
    split: str,
    pairs_path: Path,
    tokens_path: Path,
    download_dir: Path,
    out_dir: Path,
    cfg: Any,
) -> dict:
    """Write the shards of one split under out_dir and return its manifest, from the split's pairs
    parquet and its token .npy (row i of the one is row i of the other). `cfg` is the `data.shard`
    section (image_size, resize_mode, resize_at, samples_per_shard, jpeg_quality, workers, seed)."""
    pairs_in = pq.ParquetFile(pairs_path).metadata.num_rows
    tokens = TokenFile.open(tokens_path)
    if pairs_in != tokens.rows:
        raise ShardInputError(f"{dataset}/{split}: {pairs_in} pairs ({pairs_path}) but {tokens.rows} token rows "
                         f"({tokens_path})")
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("shard-*.tar"):  # a rerun replaces the split's shards, never mixes them
        old.unlink()
    for old in out_dir.glob(f"{SCRATCH_PREFIX}*"):  # left by a killed run: not part of the output
        shutil.rmtree(old)
    # The sort's run files hold all the pairs with their tokens once: beside the shards, on the data
    # disk, rather than in the system's temporary directory.
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=out_dir) as scratch:
        jobs = shard_jobs(dataset, split, pairs_path, tokens, download_dir, out_dir, cfg, Path(scratch))
        results = run_jobs(jobs, cfg.workers)
    shards: list[dict] = []
    skipped: Counter = Counter()
    for job_shards, job_skipped in results:
        shards.extend(job_shards)
        skipped.update(job_skipped)
    manifest = {
        "dataset": dataset,
        "split": split,
        "samples": sum(s["samples"] for s in shards),
        "pairs_in": pairs_in,
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": sum(skipped.values()),
        "image_size": cfg.image_size,
        "resize_mode": cfg.resize_mode,
        "resize_at": cfg.resize_at,  # load: the loader makes the image_size square (older manifests: shard)
        "context_length": tokens.width - 1,
        "shards": shards,
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


@dataclass(frozen=True)
class TokenFile:
    """A token .npy as its header describes it: `rows` rows of `width` values of `dtype`, in C order
    from byte `offset` on, so that its rows can be read in order with plain reads."""

    path: Path
    rows: int
    width: int
    dtype: np.dtype
    offset: int

    @classmethod
    def open(cls, path: Path) -> TokenFile:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ShardInputError(f"{path}: .npy format version {version} is not read here (1.0 or 2.0)")
            shape, fortran_order, dtype = read_header(f)
            offset = f.tell()
        if len(shape) != 2 or fortran_order:
            raise ShardInputError(f"{path}: token rows must be a 2-D array in C order, not shape {shape}"
                             f"{' in Fortran order' if fortran_order else ''}")
        return cls(Path(path), shape[0], shape[1], dtype, offset)


def pairs_with_tokens(pairs_path: Path, tokens: TokenFile) -> Iterator[pa.Table]:
    """The split's pairs one parquet row group at a time (the split stage writes CHUNK_ROWS a group),
    each row with its number in the split (`row`) and its token row's bytes (`tokens`). The token
    rows are read with plain reads, in order, one group's at a time: a memory map's touched pages
    would stay in this process's RSS, the whole file by the end."""
    row_bytes = tokens.width * tokens.dtype.itemsize
    start = 0
    with open(tokens.path, "rb") as f:
        f.seek(tokens.offset)
        for table in row_groups(pairs_path, PAIR_COLUMNS):
            n = table.num_rows
            raw = f.read(n * row_bytes)
            if len(raw) != n * row_bytes:
                raise ShardInputError(f"{tokens.path}: ends before token row {start + n} (a truncated file)")
            token_rows = pa.FixedSizeBinaryArray.from_buffers(pa.binary(row_bytes), n, [None, pa.py_buffer(raw)])
            yield (table.append_column("row", pa.array(np.arange(start, start + n, dtype=np.int64)))
                   .append_column("tokens", token_rows))
            start += n


def shard_jobs(dataset: str, split: str, pairs_path: Path, tokens: TokenFile, download_dir: Path,
               out_dir: Path, cfg: Any, scratch: Path) -> Iterator[ShardJob]:
    """One job per downloaded tar, in tar order (which numbers them), each with its pairs in split
    order and their token rows, made one at a time as they are asked for.
    The pairs file is ordered by URL, so a tar's pairs are scattered through it: they are brought
    together by an external sort on (tar, row) whose run files go under `scratch` (pipeline/data/sorting.py),
    so that memory holds a run of rows while sorting and a few rows per run while merging, not the split."""
    keys = ["tar", "row"]
    runs = sort_to_runs(pairs_with_tokens(pairs_path, tokens), keys, scratch)
    for number, (tar, rows) in enumerate(grouped(merge_runs(runs, keys), "tar")):
        yield ShardJob(
            dataset=dataset,
            split=split,
            tar_path=str(download_dir / tar),
            pairs=[(r["row"], r["key"], r["url"], r["image_id"], r["caption_index"], r["caption"]) for r in rows],
            tokens=np.frombuffer(b"".join(r["tokens"] for r in rows), tokens.dtype).reshape(len(rows), tokens.width),
            source_tar=tar,
            number=number,
            out_dir=out_dir,
            image_size=cfg.image_size,
            resize_mode=cfg.resize_mode,
            resize_at=cfg.resize_at,
            jpeg_quality=cfg.jpeg_quality,
            samples_per_shard=cfg.samples_per_shard,
            seed=cfg.seed,
        )


def run_jobs(jobs: Iterator[ShardJob], workers: int) -> list[tuple[list[dict], Counter]]:
    """process_tar's result for each job, in job order: in `workers` processes, or in this one when
    workers <= 1 or there is a single job. At most JOBS_IN_FLIGHT_PER_WORKER * workers jobs are
    submitted and not yet collected: each holds its tar's pairs and token rows in this process until
    its result comes back, and the jobs are only made (read from the sort) as the window moves on."""
    first = list(itertools.islice(jobs, 2))  # enough to tell one job from several
    jobs = itertools.chain(first, jobs)
    if workers <= 1 or len(first) < 2:
        return [process_tar(job) for job in jobs]
    results, in_flight = [], collections.deque()
    with ProcessPoolExecutor(max_workers=workers, initializer=one_torch_thread) as pool:
        for job in jobs:
            if len(in_flight) == JOBS_IN_FLIGHT_PER_WORKER * workers:
                results.append(in_flight.popleft().result())
            in_flight.append(pool.submit(process_tar, job))
        results.extend(future.result() for future in in_flight)
    return results

