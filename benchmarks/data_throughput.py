"""Data throughput on this machine: captions tokenized, images sharded, and training images loaded
per second, the loader beside raw decoding of the same shard files.

    python benchmarks/data_throughput.py [--captions 50000] [--images 2000] [--image-size 288]
                                         [--resize-at shard|load]

Tokenization uses the demo's trained Unigram tokenizer (T5-base itself cannot be downloaded here;
both are `tokenizers` Unigram models behind the same fast-tokenizer API). Sharding decodes JPEGs of
varied sizes from an img2dataset-style tar, resizes them to a square (bilinear), re-encodes them and
writes shards, as the shard stage does, with 1 and with 2 worker processes.

Loading reads those shards back: "raw decode" is the floor of any loader (read each tar, decode each
JPEG with the same torchvision decoder, nothing else; with --resize-at load, where the shards hold the
downloaded images and the loader makes the squares, also `prepare_image` to the square, as the
loader does); "TrainLoader" is the training loader (tar members read with tarfile and grouped into
samples by webdataset, shuffle buffer, token checks, batching), in the same process and with 2
DataLoader workers, against raw decoding in the same process and in 2 processes. Rounds alternate
between the two so that both see the same machine load; the best of 3 rounds is reported. Beside
images/s, each is measured in CPU microseconds per image over all its processes (rusage of this
process and its reaped workers): on a shared machine that column is the reliable one, and it counts
what a loader costs the training process's cores, worker start-up and the main process's share
(receiving chunks, assembling micro-batches) included.

Last, the 2 DataLoader workers' own CPU per image (rusage of the reaped workers alone) with the images
decoded in the workers (train.decode_on workers) and with train.decode_on device, where they only
read the tars, check the tokens and send the encoded images: what is left of the loader's work for
a GPU machine's cores when the GPU decodes (here the training process decodes them on the CPU).
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer's threads must not meet fork()

import argparse
import dataclasses
import functools
import io
import random
import resource
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipeline.config import build_config
from pipeline.data.loader import Manifest, TrainLoader
from pipeline.data.preprocess import decode_image, prepare_image
from pipeline.data.shard import one_torch_thread, shard_split
from pipeline.data.tokenizer import build_tokenizer, encode_captions

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon"]
RELATIONS = ["to the left of", "to the right of", "above", "below", "next to"]


def random_caption(rng: random.Random) -> str:
    a = f"a {rng.choice(['small', 'large'])} {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
    b = f"a {rng.choice(['small', 'large'])} {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
    return f"{a} {rng.choice(RELATIONS)} {b} on a {rng.choice(COLOURS)} background"


def random_jpeg(rng: random.Random, textured: bool) -> bytes:
    """Flat shapes (the demo's kind: JPEG decodes them fast) or the same with grain added, whose
    entropy, like a photograph's, makes JPEG decoding several times slower."""
    w, h = rng.randint(200, 640), rng.randint(200, 640)
    image = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randrange(w), rng.randrange(h)
        draw.ellipse([x, y, x + w // 4, y + h // 4], fill=tuple(rng.randrange(256) for _ in range(3)))
    if textured:
        grain = np.random.default_rng(rng.randrange(2**32)).normal(0, 24, (h, w, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def bench_tokenize(n: int, context_length: int) -> float:
    rng = random.Random(0)
    captions = [random_caption(rng) for _ in range(n)]
    tokenizer = build_tokenizer("train", 1024, captions[:5000])
    start = time.perf_counter()
    encode_captions(tokenizer, captions, context_length)
    return n / (time.perf_counter() - start)


def bench_shard(n: int, image_size: int, workers: int, root: Path, textured: bool = False,
                resize_at: str = "shard") -> float:
    rng = random.Random(1)
    download = root / "download"
    (download / "main").mkdir(parents=True, exist_ok=True)
    per_tar = n // 2  # two input tars, so two workers have one each
    rows = []
    for t in range(2):
        with tarfile.open(download / "main" / f"{t:05d}.tar", "w") as tar:
            for i in range(per_tar):
                data, key = random_jpeg(rng, textured), f"{t:04d}{i:05d}"
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                rows.append((f"main/{t:05d}.tar", key, f"http://x/{key}.jpg", key, 0, "caption"))
    pairs = pd.DataFrame(rows, columns=["tar", "key", "url", "image_id", "caption_index", "caption"])
    pairs.to_parquet(root / "pairs.parquet", index=False)
    np.save(root / "tokens.npy", np.zeros((len(pairs), 65), dtype=np.int32))
    start = time.perf_counter()
    cfg = dataclasses.replace(build_config({"preset": "paper"}).data.shard, image_size=image_size,
                              samples_per_shard=1000, workers=workers, resize_at=resize_at)
    manifest = shard_split("bench", "train", root / "pairs.parquet", root / "tokens.npy", download, root / f"out{workers}", cfg)
    assert manifest["samples"] == len(pairs)
    return len(pairs) / (time.perf_counter() - start)


def decode_tar(path: Path, square: tuple[int, str] | None = None) -> int:
    """Raw decoding: every JPEG of one shard file, nothing else; with `square` (image size, resize
    mode), each also made square as the loader does for shards made with resize_at load."""
    count = 0
    with tarfile.open(path) as tar:
        for member in tar:
            if member.name.endswith(".jpg"):
                pixels = decode_image(tar.extractfile(member).read())
                if square is not None:
                    prepare_image(pixels, *square)
                count += 1
    return count


def cpu_seconds() -> float:
    """User + system CPU of this process and of its reaped children (pool and DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run) -> tuple[float, float]:
    """(images / s, CPU microseconds per image, all processes) of run(), which returns its image count."""
    start, cpu = time.perf_counter(), cpu_seconds()
    count = run()
    return count / (time.perf_counter() - start), (cpu_seconds() - cpu) * 1e6 / count


def bench_raw_decode(shards: list[Path], processes: int, square: tuple[int, str] | None = None) -> tuple[float, float]:
    decode = functools.partial(decode_tar, square=square)

    def run() -> int:
        if processes == 1:
            return sum(decode(p) for p in shards)
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(processes, initializer=one_torch_thread) as pool:
            return sum(pool.map(decode, shards))
    return timed(run)


def bench_loader(shard_dir: Path, workers: int, batch: int = 32) -> tuple[float, float]:
    loader = TrainLoader(shard_dir, micro_batch_size=batch, grad_accum_steps=1, streams=max(1, workers),
                         num_workers=workers, shuffle_buffer=1000, seed=0)
    return timed(lambda: sum(len(b) for b in loader.iter_epoch(0)))


def workers_cpu(shard_dir: Path, decode_on: str, workers: int = 2, batch: int = 32) -> float:
    """CPU microseconds per image of the DataLoader workers alone (reaped when the epoch ends)."""
    loader = TrainLoader(shard_dir, micro_batch_size=batch, grad_accum_steps=1, streams=workers,
                         num_workers=workers, shuffle_buffer=1000, seed=0, decode_on=decode_on)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    count = sum(len(b) for b in loader.iter_epoch(0))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1e6 / count


def bench_loading(shard_dir: Path, kind: str, rounds: int = 3) -> list[tuple[str, str, float]]:
    """Best of `rounds` alternating rounds: the highest images/s and, separately, the fewest CPU
    microseconds per image (the CPU column does not depend on what else the machine runs)."""
    shards = sorted(shard_dir.glob("shard-*.tar"))
    manifest = Manifest.load(shard_dir)
    square = (manifest.image_size, manifest.resize_mode) if manifest.resize_at == "load" else None
    pairs = [("raw decode", 1, lambda: bench_raw_decode(shards, 1, square)), ("TrainLoader", 1, lambda: bench_loader(shard_dir, 0)),
             ("raw decode", 2, lambda: bench_raw_decode(shards, 2, square)), ("TrainLoader", 2, lambda: bench_loader(shard_dir, 2))]
    rate = {(name, n): 0.0 for name, n, _ in pairs}
    cpu = {(name, n): float("inf") for name, n, _ in pairs}
    share = {"workers": float("inf"), "device": float("inf")}
    for _ in range(rounds):
        for name, n, run in pairs:
            r, c = run()
            rate[(name, n)], cpu[(name, n)] = max(rate[(name, n)], r), min(cpu[(name, n)], c)
        for decode_on in share:
            share[decode_on] = min(share[decode_on], workers_cpu(shard_dir, decode_on))
    rows = []
    for n in (1, 2):
        raw, loaded = ("raw decode", n), ("TrainLoader", n)
        rows.append((f"{kind}: images decoded / s", f"raw decode, {n} process(es)", rate[raw]))
        rows.append((f"{kind}: images loaded / s", f"TrainLoader, {n} process(es)", rate[loaded]))
        rows.append((f"{kind}: loader / raw", f"{n} process(es)", rate[loaded] / rate[raw]))
        rows.append((f"{kind}: CPU us / image", f"raw decode, {n} process(es)", cpu[raw]))
        rows.append((f"{kind}: CPU us / image", f"TrainLoader, {n} process(es)", cpu[loaded]))
        rows.append((f"{kind}: raw / loader CPU", f"{n} process(es)", cpu[raw] / cpu[loaded]))
    for decode_on, us in share.items():
        rows.append((f"{kind}: worker CPU us / image", f"2 workers, decode_on {decode_on}", us))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=50000)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=288)
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--resize-at", choices=["shard", "load"], default="shard",
                        help="data.shard.resize_at of the shards (load: the paper preset's; they keep the "
                             "downloads, and the loader and raw decoding make the squares)")
    args = parser.parse_args()

    rows = [("captions tokenized / s", f"context {args.context_length}", bench_tokenize(args.captions, args.context_length))]
    for kind in ("flat", "textured"):
        with tempfile.TemporaryDirectory() as tmp:
            for workers in (1, 2):
                rate = bench_shard(args.images, args.image_size, workers, Path(tmp), kind == "textured", args.resize_at)
                rows.append((f"{kind}: images sharded / s", f"{args.image_size}px, {workers} worker(s), {args.resize_at}", rate))
            rows += bench_loading(Path(tmp) / "out2", kind)
    print(f"{'measure':<32}{'setting':<30}{'rate':>12}")
    for name, setting, rate in rows:
        print(f"{name:<32}{setting:<30}{rate:>12,.2f}" if rate < 10 else f"{name:<32}{setting:<30}{rate:>12,.0f}")


if __name__ == "__main__":
    main()
