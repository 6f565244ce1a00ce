"""Does the shard stage's memory level off as the splits grow? Peak RSS, wall and CPU seconds of
`stages/shard.py cc12m` on fabricated CC12M inputs of N pairs (20,000 to millions).

    python benchmarks/shard_memory.py [--pairs 20000 200000 1000000] [--base DIR --base-pairs 20000 200000]
                                      [--workers 2] [--work DIR] [--keep]

For each N the script writes what the download, split and tokenize stages leave for the shard stage:
a download folder of img2dataset-layout tars (`main/<shard>.tar`, data.download.number_sample_per_shard
images each, keys as img2dataset computes them) holding tiny JPEGs (8x8: the paper preset's
resize_at load only reads their headers, so the stage's work is the pairs, not the pixels), the
split's `train.parquet` and `val.parquet` (one caption per image as in CC12M, 1 image in 20 in val,
ordered by URL, so each tar's pairs are scattered through the file; written in row groups of
split.CHUNK_ROWS with the schema the split stage writes) and `train.npy` / `val.npy` (int32 token
rows of the paper's context_length + 1, written a chunk at a time as the tokenize stage writes them).

Then it runs this checkout's `stages/shard.py` on them as a subprocess (the paper preset, whose shard
section says resize_at load, with data.shard.workers = --workers) and reports the child's wall
seconds, CPU seconds (user + system of the stage and its reaped worker processes, os.wait4) and
peak RSS: the stage process's own VmHWM (benchmarks/peak_rss.py says why not ru_maxrss); its worker
processes, which hold one tar's images each, are not in it. `--base DIR` runs another checkout's
stages/shard.py (e.g. main's, which read the whole split into memory) on the same inputs for the N in
`--base-pairs`, and checks that both wrote the same bytes: the md5 of every shard, manifest and counts
file. Takes about 1.5 GB of disk per million pairs under --work while it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peak_rss import add_comparison_arguments, print_table, run_measured, work_folder  # noqa: E402
from pipeline.config import build_config  # noqa: E402
from pipeline.data.split import CHUNK_ROWS, PAIR_COLUMNS, SPLITS  # noqa: E402

PRESET = "paper"
VAL_EVERY = 20  # one image in 20 is in val (CC12M: 5%)
JPEG_VARIANTS = 16  # distinct tiny images, reused


def tiny_jpegs(rng: np.random.Generator) -> list[bytes]:
    images = []
    for _ in range(JPEG_VARIANTS):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        images.append(buffer.getvalue())
    return images


def write_download(out_dir: Path, n: int, per_tar: int, rng: np.random.Generator) -> list[str]:
    """img2dataset's tars for n images, per_tar each (a .jpg and a .txt per key); returns the keys."""
    key_base = 10 ** int(np.ceil(np.log10(per_tar)))
    digits = len(str(key_base)) - 1 + 5
    images = tiny_jpegs(rng)
    keys = []
    (out_dir / "main").mkdir(parents=True)
    for shard, start in enumerate(range(0, n, per_tar)):
        with tarfile.open(out_dir / "main" / f"{shard:05d}.tar", "w") as tar:
            for i in range(min(per_tar, n - start)):
                key = f"{key_base * shard + i:0{digits}d}"
                for ext, data in (("jpg", images[(start + i) % JPEG_VARIANTS]), ("txt", b"a caption")):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                keys.append(key)
    return keys


def fake_pairs(n: int, per_tar: int, keys: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """One pair per image, CC12M-like URLs (about 100 characters on a few hundred hosts) and captions
    (about 120 characters), ordered by URL as the split stage orders them."""
    hosts = rng.integers(0, 400, n)
    ids = rng.integers(0, 2**63, n)
    urls = [f"https://images{h % 7}.host{h:03d}.example.com/product/cache/{i:016x}/{i % 977:03d}/photo-{j:08d}.jpg"
            for j, (h, i) in enumerate(zip(hosts, ids))]
    pairs = pd.DataFrame({
        "tar": [f"main/{j // per_tar:05d}.tar" for j in range(n)],
        "key": keys,
        "url": urls,
        "image_id": [f"{i:016x}" for i in ids],
        "caption_index": np.zeros(n, dtype=np.int64),
        "caption": [f"a photo number {j} of the red house by the river on a summer evening, "
                    f"seen from the old wooden bridge {i:016x}" for j, i in enumerate(ids)],
    })
    return pairs.sort_values("url", ignore_index=True)[PAIR_COLUMNS]


def write_pairs(path: Path, pairs: pd.DataFrame) -> None:
    """As the split stage writes a split: CHUNK_ROWS rows per row group, the schema from_pandas gives."""
    writer = None
    for start in range(0, len(pairs), CHUNK_ROWS):
        table = pa.Table.from_pandas(pairs.iloc[start:start + CHUNK_ROWS], preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        writer.write_table(table)
    writer.close()


def write_tokens(path: Path, rows: int, width: int, rng: np.random.Generator) -> None:
    """An int32 [rows, width] .npy, a chunk at a time (as pipeline.data.tokenizer.encode_split)."""
    header = np.lib.format.header_data_from_array_1_0(np.empty((0, width), dtype=np.int32))
    header["shape"] = (rows, width)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, rows, CHUNK_ROWS):
            f.write(rng.integers(0, 32_000, (min(CHUNK_ROWS, rows - start), width), dtype=np.int32).tobytes())


def fabricate(root: Path, n: int) -> None:
    """root/download, root/splits/{train,val}.parquet and root/tokens/{train,val}.npy for n pairs."""
    cfg = build_config({"preset": PRESET})
    per_tar = cfg.data.download.number_sample_per_shard
    rng = np.random.default_rng(n)
    keys = write_download(root / "download", n, per_tar, rng)
    pairs = fake_pairs(n, per_tar, keys, rng)
    in_val = pairs["key"].map(lambda key: int(key) % VAL_EVERY == 0).to_numpy()
    (root / "splits").mkdir()
    (root / "tokens").mkdir()
    for split, rows in zip(SPLITS, (pairs[~in_val], pairs[in_val])):
        write_pairs(root / "splits" / f"{split}.parquet", rows)
        write_tokens(root / "tokens" / f"{split}.npy", len(rows), cfg.data.tokenizer.context_length + 1, rng)


def write_params(path: Path, workers: int) -> None:
    path.write_text(yaml.safe_dump({"preset": PRESET, "data": {"shard": {"workers": workers}}}))


def run_shard(checkout: Path, inputs: Path, out: Path, params: Path) -> dict:
    """One shard stage run as a child process; its wall s, CPU s (with its workers) and peak RSS."""
    out.mkdir(parents=True)
    return run_measured(checkout / "stages" / "shard.py",
                        ["cc12m", "--params", str(params), "--download", str(inputs / "download"),
                         "--splits", str(inputs / "splits"), "--tokens", str(inputs / "tokens"),
                         "--out", str(out / "shards"), "--counts", str(out / "counts.json")],
                        out / "peak_rss_kb", cwd=checkout)


def output_md5s(out: Path) -> dict[str, str]:
    """The md5 of every file the stage wrote (shards, manifests, counts), by path under `out`."""
    return {p.relative_to(out).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "peak_rss_kb"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_comparison_arguments(parser, "pairs", [20_000, 200_000, 1_000_000], [20_000, 200_000],
                             "stages/shard.py", "inputs")
    parser.add_argument("--workers", type=int, default=2, help="data.shard.workers")
    args = parser.parse_args()

    results = []
    with work_folder("shard-memory-", args.work, args.keep) as work:
        params = work / "params.yaml"
        write_params(params, args.workers)
        for n in args.pairs:
            inputs = work / f"inputs-{n}"
            start = time.perf_counter()
            fabricate(inputs, n)
            disk = sum(p.stat().st_size for p in inputs.rglob("*") if p.is_file())
            print(f"{n:,} pairs fabricated in {time.perf_counter() - start:.0f} s ({disk / 1e6:,.0f} MB)", flush=True)
            runs = [("branch" if args.base else "this", ROOT)]
            if args.base and n in args.base_pairs:
                runs.append(("base", args.base.resolve()))
            outs = {}
            for label, checkout in runs:
                out = work / f"shards-{n}-{label}"
                result = run_shard(checkout, inputs, out, params)
                outs[label] = out
                results.append({"pairs": n, "code": label, **result})
                print(f"  {label:6} wall {result['wall_s']:7.1f} s  CPU {result['cpu_s']:7.1f} s  "
                      f"peak RSS {result['rss_mb']:7.0f} MB", flush=True)
            first, *others = outs.values()
            md5s = output_md5s(first)
            for out in others:
                if output_md5s(out) != md5s:
                    raise SystemExit(f"{out} differs from {first}")
            if others:
                print(f"  the same bytes in all {len(outs)} runs: {len(md5s)} files", flush=True)
            if not args.keep:
                shutil.rmtree(inputs)
                for out in outs.values():
                    shutil.rmtree(out)

    print_table(results, "pairs")


if __name__ == "__main__":
    main()
