"""How the data stages scale with the number of rows: CC12M-format URL lists of N rows through
download -> split -> tokenize -> shard, each stage's cost per 1,000 rows at each N, the shard stage
once per `data.shard.resize_at` (shard: it makes the square; load: the training loader does).

    python benchmarks/data_scale.py [--rows 2000 20000 100000] [--images demo|paper]
                                    [--resize-at shard load] [--keep DIR]

For each N the script writes a CC12M TSV (url<TAB>caption, no header) whose URLs point at an image
server on 127.0.0.1 that it starts and stops itself. The server answers from a pool of 48 JPEGs made
once (grain added so they decode like photographs), picked per URL by a hash; 2% of the URLs answer
404 and 1% answer bytes that are not an image, so failure accounting runs.

--images says which image settings the stages run with:
  demo   the demo preset's: downloads keep their size, 64 px squares; pool images of 120 to 480 px.
  paper  the paper preset's image keys (data.download.image_size 320, resize_mode keep_ratio, and the
         rest of its download image keys; data.shard.image_size 288, resize_mode, jpeg_quality; and
         model.image_size, which must match); pool images of 320 to 800 px, so that img2dataset shrinks
         most of them to a 320 px shorter side, as it does most of CC12M's.
Everything else is the demo preset's (processes, threads, shard workers, the trained tokenizer).

Each stage runs as its own subprocess, the real stage script (`stages/*.py`) with
`data.sources.cc12m_tsv` pointed at the TSV; the other three datasets get empty splits, so the
tokenizer (demo: trained, `name: train`) learns on these captions alone. Download, split and tokenize
run once per N; the shard stage runs once per --resize-at value on their outputs. Per stage and N:
wall seconds, CPU seconds (user + system of the stage's whole process tree: os.wait4's rusage, which
includes the children it reaped: img2dataset's workers, the shard stage's pool), the stage process's
own peak RSS (VmHWM, benchmarks/peak_rss.py), the largest ru_maxrss of its tree (img2dataset's and
the shard pool's workers; Linux carries maxrss across exec, so this is at least this script's own RSS)
and the bytes the stage wrote.
The shard stage runs with one torch thread per process (SHARD_ENV says why).
The server's own CPU is in this script's process and is not counted.

Then: the download stage's CPU (img2dataset, with our bookkeeping and the interpreter's start) beside
split + tokenize + shard's, their ratio, per resize_at; whether each stage's cost per row stays flat
from the smallest N to the largest; whether peak RSS grows more slowly than N; and a straight-line
extrapolation to CC12M's 10.9M rows on 16 cores.

Last, what resize_at load moves into training: the CPU time per image of the training loader's
`decode_sample` (pipeline/data/loader.py) on the largest N's training shards of each mode, in this
process with one torch thread (as in a DataLoader worker): decoding the stored square (shard) against
decoding the stored download and making the square with prepare_image (load). The loader pays that
difference every epoch; the shard stage's saving is paid once: their ratio is the number of epochs
after which load has cost more CPU in all (the loader's workers run beside the GPU, so that CPU costs
training time only where the workers cannot keep up).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peak_rss import peak_mb, wrapped  # noqa: E402
from pipeline.config import build_config
from pipeline.data.split import PAIR_COLUMNS, SPLITS
from pipeline.names import DATASETS, RESIZE_AT

CC12M_ROWS = 10_900_000
TARGET_CORES = 16
POOL = 48
MISSING_PERCENT, NOT_IMAGE_PERCENT = 2, 1
STAGES = ("download", "split", "tokenize", "shard")
POOL_SIDES = {"demo": (120, 480), "paper": (320, 800)}  # the pool images' width and height range, by --images
LOAD_SAMPLES = 1000  # training samples whose load-time cost is measured
# The shard stage resizes a split of one download tar in its own process, with all of torch's threads,
# and a split of several in worker processes of one thread each. At the smaller sizes here every split
# is one tar; one thread makes them cost what they cost at CC12M's scale (idle OpenMP threads that spin
# on a busy machine count as CPU otherwise: 16 of 22 CPU s at 2,000 paper-size rows, when first run).
SHARD_ENV = {"OMP_NUM_THREADS": "1"}

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey", "brown"]
THINGS = ["dog", "cat", "house", "car", "tree", "boat", "bicycle", "woman", "man", "child", "bird",
          "mountain", "street", "table", "cup", "flower", "train", "horse", "beach", "kitchen"]
PLACES = ["in a park", "on a street", "at the beach", "in a kitchen", "near a lake", "in the snow",
          "at night", "in a field", "on a table", "in front of a building"]
VERBS = ["standing", "sitting", "running", "lying", "parked", "waiting", "playing", "resting"]


def caption(rng: random.Random) -> str:
    return (f"a {rng.choice(COLOURS)} {rng.choice(THINGS)} {rng.choice(VERBS)} {rng.choice(PLACES)} "
            f"with a {rng.choice(COLOURS)} {rng.choice(THINGS)}")


def image_params(images: str) -> dict:
    """The params.yaml overrides of --images: none for demo; the paper preset's image keys for paper."""
    if images == "demo":
        return {}
    paper = build_config({"preset": "paper"})
    download, shard = paper.data.download, paper.data.shard
    return {"data": {"download": {k: getattr(download, k) for k in ("image_size", "resize_mode", "resize_only_if_bigger",
                                                                    "encode_format", "encode_quality")},
                     "shard": {k: getattr(shard, k) for k in ("image_size", "resize_mode", "jpeg_quality")}},
            "model": {"image_size": paper.model.image_size}}


def jpeg_pool(sides: tuple[int, int], seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    pool = []
    for _ in range(POOL):
        w, h = rng.randint(*sides), rng.randint(*sides)
        image = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = rng.randrange(w), rng.randrange(h)
            draw.ellipse([x, y, x + w // 3, y + h // 3], fill=tuple(rng.randrange(256) for _ in range(3)))
        grain = np.random.default_rng(rng.randrange(2**32)).integers(-24, 25, (h, w, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        pool.append(buffer.getvalue())
    return pool


def kind_of(path: str) -> tuple[str, int]:
    """What the server answers for a path: ('missing' | 'not_image' | 'image', pool index)."""
    digest = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
    percent = digest % 100
    kind = "missing" if percent < MISSING_PERCENT else "not_image" if percent < MISSING_PERCENT + NOT_IMAGE_PERCENT \
        else "image"
    return kind, (digest // 100) % POOL


@contextmanager
def image_server(pool: list[bytes]):
    """An HTTP image server on 127.0.0.1 in a thread of this process; yields its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            kind, index = kind_of(self.path)
            if kind == "missing":
                self.send_error(404)
                return
            body = b"<html>not an image</html>\n" if kind == "not_image" else pool[index]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def write_tsv(path: Path, rows: int, base_url: str) -> dict[str, int]:
    rng = random.Random(rows)
    kinds = {"image": 0, "missing": 0, "not_image": 0}
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            url_path = f"/img/{i:08d}.jpg"
            kinds[kind_of(url_path)[0]] += 1
            f.write(f"{base_url}{url_path}\t{caption(rng)}\n")
    return kinds


def own_rss_mb() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024


def run_stage(argv: list[str], cwd: Path, env: dict) -> dict:
    """Run one stage script; its wall time, CPU time (its whole process tree), the stage process's own
    peak RSS (benchmarks/peak_rss.py) and the largest ru_maxrss of its tree (at least this script's
    own RSS when it started the stage: Linux carries maxrss across exec)."""
    start = time.perf_counter()
    peak = cwd / "peak_rss_kb"
    with open(cwd / "stage.log", "ab") as log:
        proc = subprocess.Popen(wrapped(argv[0], argv[1:], peak), cwd=cwd, env=env, stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{argv[0]} failed ({proc.returncode}); see {cwd / 'stage.log'}:\n"
                 + (cwd / "stage.log").read_text()[-3000:])
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": peak_mb(peak),
            "tree_rss_mb": usage.ru_maxrss / 1024}


def size_of(*paths: Path) -> int:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def deep_merge(base: dict, over: dict) -> dict:
    return {**base, **{k: deep_merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in over.items()}}


def load_cost(shard_dir: Path) -> dict:
    """CPU ms per sample of the training loader's decode_sample on the first LOAD_SAMPLES samples of
    these shards (best of 3 passes), one torch thread; and the stored image's mean size in bytes."""
    import torch

    from pipeline.data.loader import Manifest, decode_sample, read_shards

    manifest = Manifest.load(shard_dir)
    samples = list(itertools.islice(read_shards([shard_dir / f for f, _ in manifest.shards], [0]), LOAD_SAMPLES))
    image_bytes = [len(v) for s in samples for k, v in s.items() if k in ("jpg", "png", "webp")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            for sample in samples:
                decode_sample(sample, manifest)
            best = min(best, (time.process_time() - start) / len(samples))
    finally:
        torch.set_num_threads(threads)
    return {"ms": best * 1000, "samples": len(samples), "image_bytes": sum(image_bytes) / len(image_bytes)}


def run_size(rows: int, work: Path, pool: list[bytes], images: str, modes: list[str], measure_load: bool) -> dict:
    work.mkdir(parents=True)
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
           "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    with image_server(pool) as base_url:
        kinds = write_tsv(work / "cc12m.tsv", rows, base_url)
        base = deep_merge({"preset": "demo", "data": {"sources": {"cc12m_tsv": str(work / "cc12m.tsv")}}},
                          image_params(images))
        (work / "params.yaml").write_text(yaml.safe_dump(base))
        for mode in modes:  # the shard stage's params, one file per resize_at
            (work / f"params-{mode}.yaml").write_text(yaml.safe_dump(deep_merge(base, {
                "data": {"shard": {"resize_at": mode}}})))
        for dataset in DATASETS[1:]:  # the other datasets: empty splits, so tokenize reads cc12m alone
            (work / "splits" / dataset).mkdir(parents=True)
            for split in SPLITS:
                pd.DataFrame({c: pd.Series(dtype=str) for c in PAIR_COLUMNS}).to_parquet(
                    work / "splits" / dataset / f"{split}.parquet", index=False)
        params = ["--params", str(work / "params.yaml")]
        stage = str(ROOT / "stages")
        plan = {
            "download": ([f"{stage}/download.py", "cc12m", *params, "--out", "download", "--report", "download.json"],
                         ["download", "download.json"]),
            "split": ([f"{stage}/split.py", "cc12m", *params, "--download", "download", "--out", "splits/cc12m",
                       "--counts", "split.json"], ["splits/cc12m", "split.json"]),
            "tokenize": ([f"{stage}/tokenize_captions.py", *params, "--splits", "splits", "--tokenizer-out",
                          "tokenizer", "--tokens-out", "tokens", "--counts", "tokenize.json"],
                         ["tokenizer", "tokens", "tokenize.json"]),
        }
        for mode in modes:
            plan[f"shard {mode}"] = ([f"{stage}/shard.py", "cc12m", "--params", str(work / f"params-{mode}.yaml"),
                                      "--download", "download", "--splits", "splits/cc12m", "--tokens", "tokens/cc12m",
                                      "--out", f"shards-{mode}", "--counts", f"shard-{mode}.json"],
                                     [f"shards-{mode}", f"shard-{mode}.json"])
        for name, (argv, outs) in plan.items():
            results[name] = run_stage(argv, work, {**env, **SHARD_ENV} if name.startswith("shard") else env)
            results[name]["bytes"] = size_of(*(work / o for o in outs))
            print(f"  {rows} rows: {name} {results[name]['wall']:.1f} s", flush=True)
    report = json.loads((work / "download.json").read_text())
    shards = {mode: json.loads((work / f"shard-{mode}.json").read_text()) for mode in modes}
    results["counts"] = {"rows": rows, "served": kinds, "downloaded": report["success"], "failed": report["failed"],
                         "shard_samples": {m: s["train_samples"] + s["val_samples"] for m, s in shards.items()}}
    if measure_load:
        results["load_cost"] = {mode: load_cost(work / f"shards-{mode}" / "train") for mode in modes}
    return results


def per_k(value: float, rows: int) -> float:
    return value * 1000 / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 20000, 100000])
    parser.add_argument("--images", choices=sorted(POOL_SIDES), default="demo",
                        help="the demo preset's image settings, or the paper preset's (see above)")
    parser.add_argument("--resize-at", nargs="+", choices=RESIZE_AT, default=list(RESIZE_AT),
                        help="the shard stage's data.shard.resize_at values, one run each")
    parser.add_argument("--keep", type=Path, help="keep each size's files under this folder (default: deleted)")
    args = parser.parse_args()
    sizes, modes = sorted(args.rows), list(dict.fromkeys(args.resize_at))
    stages = [*STAGES[:-1], *(f"shard {mode}" for mode in modes)]
    pool = jpeg_pool(POOL_SIDES[args.images])
    print(f"image pool: {POOL} JPEGs of {POOL_SIDES[args.images][0]} to {POOL_SIDES[args.images][1]} px, "
          f"{sum(map(len, pool)) // POOL:,} bytes each on average; {MISSING_PERCENT}% of URLs 404, "
          f"{NOT_IMAGE_PERCENT}% not an image; {os.cpu_count()} CPUs; --images {args.images}: "
          f"{json.dumps(image_params(args.images)) if args.images != 'demo' else 'the demo preset'}", flush=True)

    measured = {}
    base = args.keep or Path(tempfile.mkdtemp(prefix="grr-coca-data-scale-"))
    try:
        for rows in sizes:
            measured[rows] = run_size(rows, base / f"rows-{rows}", pool, args.images, modes, rows == sizes[-1])
            if not args.keep:
                shutil.rmtree(base / f"rows-{rows}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print()
    for rows in sizes:
        c = measured[rows]["counts"]
        print(f"{rows:>7} rows: {c['downloaded']} downloaded, {c['failed']} failed "
              f"(served {c['served']['missing']} 404s, {c['served']['not_image']} non-images), samples in shards: "
              + ", ".join(f"{n} (resize_at {mode})" for mode, n in c["shard_samples"].items()))
    print()
    print(f"peak RSS: the stage process's own (VmHWM); tree: the largest ru_maxrss of its process tree, which "
          f"is at least this script's RSS when it started the stage ({own_rss_mb():.0f} MB now)")
    print("| stage | rows | wall s / 1k rows | CPU s / 1k rows | peak RSS MB | tree MB | output MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in stages:
        for rows in sizes:
            r = measured[rows][name]
            print(f"| {name} | {rows} | {per_k(r['wall'], rows):.3f} | {per_k(r['cpu'], rows):.3f} | "
                  f"{r['rss_mb']:.0f} | {r['tree_rss_mb']:.0f} | {r['bytes'] / 1e6:.1f} |")

    print()
    print("| resize_at | rows | download CPU s / 1k | split+tokenize+shard CPU s / 1k | added | shard's share of all CPU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for mode in modes:
        for rows in sizes:
            m = measured[rows]
            ours = sum(m[s]["cpu"] for s in ("split", "tokenize", f"shard {mode}"))
            total = ours + m["download"]["cpu"]
            print(f"| {mode} | {rows} | {per_k(m['download']['cpu'], rows):.3f} | {per_k(ours, rows):.3f} | "
                  f"{ours / m['download']['cpu']:.0%} | {m[f'shard {mode}']['cpu'] / total:.0%} |")

    large = sizes[-1]
    costs = measured[large]["load_cost"]
    print()
    print(f"the training loader's CPU per sample (decode_sample on the first {LOAD_SAMPLES} samples of the {large}-row "
          "run's training shards, one torch thread, best of 3):")
    for mode in modes:
        c = costs[mode]
        what = "decode the stored square" if mode == "shard" else "decode the stored download + prepare_image"
        print(f"  resize_at {mode:<5} {c['ms']:.3f} ms ({what}; stored images {c['image_bytes'] / 1e3:.1f} kB on average)")
    if set(modes) == set(RESIZE_AT):
        # The shard stage's saving per sample: the marginal between the two largest sizes (start-up left
        # out), or with one size its whole CPU (start-up included).
        first = sizes[-2] if len(sizes) > 1 else None
        def cpu_per_sample(mode: str) -> float:
            cpu = measured[large][f"shard {mode}"]["cpu"] - (measured[first][f"shard {mode}"]["cpu"] if first else 0)
            samples = measured[large]["counts"]["shard_samples"][mode] - (
                measured[first]["counts"]["shard_samples"][mode] if first else 0)
            return cpu / samples
        added = (costs["load"]["ms"] - costs["shard"]["ms"]) / 1000  # CPU s per sample per epoch
        saved = cpu_per_sample("shard") - cpu_per_sample("load")
        print(f"  load moves {added * 1000:.3f} ms per sample into every epoch ({added * 1000:.2f} CPU s per 1k "
              f"samples) and saves the shard stage {saved * 1000:.3f} ms per sample once "
              + (f"(the marginal from {first} to {large} rows)" if first else "(start-up included: one size only)")
              + (f": the saving is used up after {saved / added:.1f} epochs" if added > 0 else ""))

    small = sizes[0]
    if small == large:
        return
    print()
    print(f"scaling from {small} to {large} rows ({large / small:.0f}x). CPU per row falls where a fixed start-up "
          "(the interpreter, imports: torch, transformers, img2dataset) is spread over more rows; the marginal "
          "cost between consecutive sizes is the per-row cost itself:")
    for name in stages:
        cpu = {rows: measured[rows][name]["cpu"] for rows in sizes}
        ratio = per_k(cpu[large], large) / per_k(cpu[small], small)
        marginals = [(cpu[b] - cpu[a]) / (b - a) * 1000 for a, b in itertools.pairwise(sizes)]
        fixed = cpu[small] - marginals[0] * small / 1000
        if max(marginals) < 0.05:
            verdict = "too small to judge: under 0.05 CPU s per 1k rows"
        elif len(marginals) < 2:
            verdict = "one marginal only: run three sizes to judge"
        elif marginals[-1] > 1.25 * marginals[0]:
            verdict = "GROWS faster than linear: the last marginal is over 1.25x the first"
        else:
            verdict = "linear: the last marginal within 25% of the first" if marginals[-1] >= 0.75 * marginals[0] \
                else "the last marginal is under 0.75x the first (cheaper per row at scale)"
        print(f"  {name:<11} CPU s per 1k rows x{ratio:.2f}; start-up ~{fixed:.1f} CPU s; marginal CPU s per 1k rows "
              + ", ".join(f"{m:.3f}" for m in marginals) + f" ({verdict})")
    print()
    print("peak RSS of the stage process (a fixed floor of interpreter and imports, then what grows with "
          "the rows; the slope between the smallest and largest size, carried to CC12M). Below ~100k rows the "
          "stages' fixed-size buffers are still filling (32,768-row sort runs and URL-list row groups, 16,384-row "
          "pair chunks, a shard pool's window of download tars), so this slope overstates growth: "
          "benchmarks/download_memory.py, split_memory.py and shard_memory.py measure the stages at 100k to 3M rows:")
    for name in stages:
        rss = {rows: measured[rows][name]["rss_mb"] for rows in sizes}
        slope = (rss[large] - rss[small]) / (large - small)  # MB per row
        growth = rss[large] / rss[small]
        flat = slope * CC12M_ROWS < 0.25 * rss[large]  # under a quarter more at 10.9M rows
        line = (f"  {name:<11} x{growth:.2f} for {large / small:.0f}x the rows "
                f"({'flat' if flat else 'GROWS with the rows'})")
        if slope > 0:
            line += (f"; +{slope * 1e6 / 1e3:.2f} kB per row: {(rss[large] + slope * (CC12M_ROWS - large)) / 1e3:.1f} GB "
                     f"at {CC12M_ROWS:,} rows if it keeps growing so")
        print(line)

    print()
    print(f"extrapolation to {CC12M_ROWS:,} rows on {TARGET_CORES} cores (assumes: each stage's CPU is linear in "
          f"rows at the marginal cost between the two largest sizes, {sizes[-2]} and {large} rows, on cores like "
          f"these, divided evenly over {TARGET_CORES} cores with no other bottleneck; start-up costs left out; real "
          "downloads add network time, which a local server does not have):")
    for mode in modes:
        total = 0.0
        for name in [*STAGES[:-1], f"shard {mode}"]:
            a, b = measured[sizes[-2]][name], measured[large][name]
            marginal = max(0.0, (b["cpu"] - a["cpu"]) / (large - sizes[-2]))
            hours = marginal * CC12M_ROWS / TARGET_CORES / 3600
            total += hours
            print(f"  {name:<11} {marginal * CC12M_ROWS / 3600:8.1f} CPU hours -> {hours:6.2f} h on {TARGET_CORES} cores")
        print(f"  {'all':<11} {total * TARGET_CORES:8.1f} CPU hours -> {total:6.2f} h on {TARGET_CORES} cores "
              f"(resize_at {mode})")


if __name__ == "__main__":
    main()
