"""Data-stage throughput on this machine: captions tokenized per second and images sharded per second.

    python benchmarks/data_throughput.py [--captions 50000] [--images 2000] [--image-size 288]

Tokenization uses the demo's trained Unigram tokenizer (T5-base itself cannot be downloaded here;
both are `tokenizers` Unigram models behind the same fast-tokenizer API). Sharding decodes JPEGs of
varied sizes from an img2dataset-style tar, resizes them to a square (bilinear), re-encodes them and
writes shards, as the shard stage does, with 1 and with 2 worker processes.
"""

import argparse
import io
import dataclasses
import random
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipeline.config import build_config
from pipeline.data.shard import shard_split
from pipeline.data.tokenizer import build_tokenizer, encode_captions

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon"]
RELATIONS = ["to the left of", "to the right of", "above", "below", "next to"]


def random_caption(rng: random.Random) -> str:
    a = f"a {rng.choice(['small', 'large'])} {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
    b = f"a {rng.choice(['small', 'large'])} {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
    return f"{a} {rng.choice(RELATIONS)} {b} on a {rng.choice(COLOURS)} background"


def random_jpeg(rng: random.Random) -> bytes:
    w, h = rng.randint(200, 640), rng.randint(200, 640)
    image = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randrange(w), rng.randrange(h)
        draw.ellipse([x, y, x + w // 4, y + h // 4], fill=tuple(rng.randrange(256) for _ in range(3)))
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


def bench_shard(n: int, image_size: int, workers: int, root: Path) -> float:
    rng = random.Random(1)
    download = root / "download"
    (download / "main").mkdir(parents=True, exist_ok=True)
    per_tar = n // 2  # two input tars, so two workers have one each
    rows = []
    for t in range(2):
        with tarfile.open(download / "main" / f"{t:05d}.tar", "w") as tar:
            for i in range(per_tar):
                data, key = random_jpeg(rng), f"{t:04d}{i:05d}"
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                rows.append((f"main/{t:05d}.tar", key, f"http://x/{key}.jpg", key, 0, "caption"))
    pairs = pd.DataFrame(rows, columns=["tar", "key", "url", "image_id", "caption_index", "caption"])
    tokens = np.zeros((len(pairs), 65), dtype=np.int32)
    start = time.perf_counter()
    cfg = dataclasses.replace(build_config({"preset": "paper"}).data.shard, image_size=image_size,
                              samples_per_shard=1000, workers=workers)
    manifest = shard_split("bench", "train", pairs, tokens, download, root / f"out{workers}", cfg)
    assert manifest["samples"] == len(pairs)
    return len(pairs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=50000)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=288)
    parser.add_argument("--context-length", type=int, default=64)
    args = parser.parse_args()

    rows = [("captions tokenized / s", f"context {args.context_length}", bench_tokenize(args.captions, args.context_length))]
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            rate = bench_shard(args.images, args.image_size, workers, Path(tmp))
            rows.append(("images sharded / s", f"{args.image_size}px, {workers} worker(s)", rate))
    print(f"{'measure':<26}{'setting':<26}{'rate':>12}")
    for name, setting, rate in rows:
        print(f"{name:<26}{setting:<26}{rate:>12,.0f}")


if __name__ == "__main__":
    main()
