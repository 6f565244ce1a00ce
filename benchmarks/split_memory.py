"""Does the split stage's memory level off as the URL list grows? Peak RSS, wall and CPU seconds of
`stages/split.py cc12m` on fabricated CC12M downloads of N rows (100,000 to millions).

    python benchmarks/split_memory.py [--rows 100000 1000000 3000000] [--base DIR --base-rows 100000 1000000]
                                      [--pools default system] [--work DIR] [--keep]

No image is fetched: for each N the script writes a download folder in the layout
pipeline/data/download.py leaves (download.json, urls.parquet, passes.json, refused.json, and per pass
its list, as one `<pass>.urls.parquet` file, the older layout download.py still reads, and
img2dataset's per-shard `<shard>.parquet` + `<shard>_stats.json`), which is all the split stage reads: it never opens the tars (a sample's tar is only named in its pairs), so
none is written. The rows look like CC12M's: URLs of about 100 characters on a few hundred hosts
(1% of rows repeat an earlier URL, with another caption), captions of about 120 characters, a
16-hex image_id. The `main` pass fails 3% of its images (2% failed_to_download, 1% failed_to_resize)
and a `retry-01` pass gets half of those back, so the split reads two passes. The URL lists are
written 100,000 rows at a time in row groups of at most download.URL_LIST_ROW_GROUP_ROWS, and the
shards hold data.download.number_sample_per_shard rows (10,000), as the download stage writes them.

Then it runs this checkout's `stages/split.py` on the folder as a subprocess (the demo preset's
params.yaml, TMPDIR under --work so the sort's run files land there too) and reports the child's
wall seconds, CPU seconds (user + system, os.wait4) and peak RSS: the child's VmHWM, which a small
wrapper reads from /proc/self/status as the stage's interpreter exits. Not ru_maxrss: Linux carries
a process's maxrss across exec, so a child started from this script (which holds the fabricated
rows, ~400 MB) would report at least this script's RSS whatever the stage used. `--pools` repeats each run under other ARROW_DEFAULT_MEMORY_POOL values (`default`:
whatever the stage chooses). `--base DIR` runs another checkout's stages/split.py (e.g. main's
in-memory split: `git worktree add --detach /tmp/split-base main`) on the same folders for the N in
`--base-rows`, and checks that both wrote the same counts and the same pairs (Arrow tables equal,
row-group layout aside). Takes about 1.5 GB of disk per million rows under --work while it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peak_rss import add_comparison_arguments, run_measured, work_folder  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data import download as dl  # noqa: E402
from pipeline.data.split import SPLITS  # noqa: E402
from pipeline.io import write_json  # noqa: E402

CHUNK = 100_000  # rows fabricated at once
WORDS = ("a photo of the red blue small large old new wooden metal house car dog cat tree street man "
         "woman child city beach mountain river table chair window garden flower bird sky night summer "
         "winter vintage modern illustration vector icon logo design background pattern").split()
SHARD_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("split", pa.string()), ("captions", pa.string()), ("caption", pa.string()),
    ("url", pa.string()), ("key", pa.string()), ("status", pa.string()), ("error_message", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("original_width", pa.int32()),
    ("original_height", pa.int32()), ("exif", pa.string()), ("sha256", pa.string()),
])


def fake_rows(rng: np.random.Generator, start: int, n: int) -> pd.DataFrame:
    """n CC12M-like rows of a URL list as download.py stores it (identity: the URL and a tab)."""
    hosts = rng.integers(0, 400, n)
    ids = rng.integers(0, 2**63, n)
    urls = [f"https://images{h % 7}.host{h:03d}.example.com/product/cache/{i:016x}/"
            f"{i % 977:03d}/photo-{start + j:08d}-large.jpg" for j, (h, i) in enumerate(zip(hosts, ids))]
    repeat = np.flatnonzero(rng.random(n) < 0.01)  # 1%: the URL of an earlier row of this chunk
    for j in repeat:
        urls[j] = urls[int(rng.integers(0, j + 1))]
    word_index = rng.integers(0, len(WORDS), (n, 22))
    captions = [" ".join(WORDS[w] for w in row)[:120] for row in word_index]
    return pd.DataFrame({
        "url": urls,
        "caption": captions,
        "captions": [json.dumps([c]) for c in captions],
        "image_id": [hashlib.blake2b(u.encode(), digest_size=8).hexdigest() for u in urls],
        "split": "",
        "identity": [u + "\t" for u in urls],
    })


class PassWriter:
    """One pass: its URL list (download.py's row groups) and img2dataset's shard parquets, per_shard
    rows each, key = 10**ceil(log10(per_shard)) * shard + index, statuses drawn by `statuses`."""

    def __init__(self, out_dir: Path, name: str, per_shard: int, rng: np.random.Generator):
        self.out_dir, self.name, self.per_shard, self.rng = out_dir, name, per_shard, rng
        self.key_base = 10 ** int(np.ceil(np.log10(per_shard)))
        self.digits = len(str(self.key_base)) - 1 + 5
        (out_dir / name).mkdir(parents=True)
        self.list_writer, self.pending, self.shard, self.rows = None, [], 0, 0

    def add(self, rows: pd.DataFrame, failed: np.ndarray) -> None:
        rows = rows.reset_index(drop=True)
        table = pa.Table.from_pandas(rows, preserve_index=False)
        if self.list_writer is None:
            self.list_writer = pq.ParquetWriter(self.out_dir / f"{self.name}.urls.parquet", table.schema)
        self.list_writer.write_table(table, row_group_size=dl.URL_LIST_ROW_GROUP_ROWS)
        self.pending.append(rows.assign(failed=failed))
        self.rows += len(rows)
        while sum(len(p) for p in self.pending) >= self.per_shard:
            self._write_shard()

    def _write_shard(self) -> None:
        rows = pd.concat(self.pending, ignore_index=True)
        shard, self.pending = rows.iloc[: self.per_shard], [rows.iloc[self.per_shard:]]
        n = len(shard)
        kind = np.where(shard["failed"], np.where(self.rng.random(n) < 2 / 3, 1, 2), 0)
        status = np.array(["success", "failed_to_download", "failed_to_resize"])[kind]
        error = np.array([None, "<urlopen error [Errno -2] Name or service not known>", "Image decoding error"],
                         dtype=object)[kind]
        size = self.rng.integers(120, 640, (n, 2)).astype("int32")
        ok = kind == 0
        table = pa.table({
            "image_id": shard["image_id"], "split": shard["split"], "captions": shard["captions"],
            "caption": shard["caption"], "url": shard["url"],
            "key": [f"{self.key_base * self.shard + i:0{self.digits}d}" for i in range(n)],
            "status": status, "error_message": error,
            "width": pa.array(size[:, 0], pa.int32(), mask=~ok), "height": pa.array(size[:, 1], pa.int32(), mask=~ok),
            "original_width": pa.array(size[:, 0]), "original_height": pa.array(size[:, 1]),
            "exif": ["{}"] * n,
            "sha256": [hashlib.sha256(u.encode()).hexdigest() if o else None for u, o in zip(shard["url"], ok)],
        }, schema=SHARD_SCHEMA)
        pq.write_table(table, self.out_dir / self.name / f"{self.shard:05d}.parquet")
        write_json(self.out_dir / self.name / f"{self.shard:05d}_stats.json",
                   {"count": n, "successes": int(ok.sum())})
        self.shard += 1

    def close(self) -> None:
        if sum(len(p) for p in self.pending):
            self._write_shard()
        if self.list_writer is not None:
            self.list_writer.close()


def fabricate(out_dir: Path, n: int, params: Path) -> None:
    """A finished CC12M download of n rows (see the module docstring)."""
    cfg = load_config(params).data.download
    rng = np.random.default_rng(n)
    out_dir.mkdir(parents=True)
    write_json(out_dir / dl.MANIFEST, {"dataset": "cc12m", **{o: getattr(cfg, o) for o in dl.OUTPUT_OPTIONS}})
    write_json(out_dir / dl.REFUSED, {})
    main = PassWriter(out_dir, dl.MAIN, cfg.number_sample_per_shard, rng)
    urls_writer, failed_rows = None, []
    for start in range(0, n, CHUNK):
        rows = fake_rows(rng, start, min(CHUNK, n - start))
        table = pa.Table.from_pandas(rows, preserve_index=False)
        if urls_writer is None:
            urls_writer = pq.ParquetWriter(out_dir / dl.URLS, table.schema)
        urls_writer.write_table(table, row_group_size=dl.URL_LIST_ROW_GROUP_ROWS)
        new = rows.drop_duplicates("identity")  # repeats stay within a chunk: one pass row per image
        failed = rng.random(len(new)) < 0.03
        main.add(new, failed)
        failed_rows.append(new[failed])
    urls_writer.close()
    main.close()
    retry = PassWriter(out_dir, "retry-01", cfg.number_sample_per_shard, rng)
    again = pd.concat(failed_rows, ignore_index=True)
    retry.add(again, rng.random(len(again)) < 0.5)  # half of them fail again
    retry.close()
    write_json(out_dir / dl.PASSES, [dl.MAIN, "retry-01"])


def run_split(checkout: Path, download: Path, out: Path, work: Path, pool: str) -> dict:
    """One split stage run as a child process; its wall s, CPU s and peak RSS."""
    env = {**os.environ, "TMPDIR": str(work)}
    if pool != "default":
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool
    out.mkdir(parents=True)
    result = run_measured(checkout / "stages" / "split.py", ["cc12m", "--params", str(checkout / "params.yaml"),
                          "--download", str(download), "--out", str(out), "--counts", str(out / "counts.json")],
                          out / "peak_rss_kb", cwd=checkout, env=env)
    return {**result, "counts": json.loads((out / "counts.json").read_text())}


def same_pairs(a: Path, b: Path) -> bool:
    return all(pq.read_table(a / f"{s}.parquet").equals(pq.read_table(b / f"{s}.parquet")) for s in SPLITS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_comparison_arguments(parser, "rows", [100_000, 1_000_000, 3_000_000], [100_000, 1_000_000],
                             "stages/split.py", "downloads")
    parser.add_argument("--pools", nargs="+", default=["default"], help="ARROW_DEFAULT_MEMORY_POOL values")
    args = parser.parse_args()

    results = []
    with work_folder("split-memory-", args.work, args.keep) as work:
        for n in args.rows:
            download = work / f"download-{n}"
            start = time.perf_counter()
            fabricate(download, n, ROOT / "params.yaml")
            disk = sum(p.stat().st_size for p in download.rglob("*") if p.is_file())
            print(f"{n:,} rows fabricated in {time.perf_counter() - start:.0f} s ({disk / 1e6:,.0f} MB)", flush=True)
            runs = [("branch" if args.base else "this", ROOT, pool) for pool in args.pools]
            if args.base and n in args.base_rows:
                runs += [("base", args.base.resolve(), pool) for pool in args.pools]
            outs = {}
            for label, checkout, pool in runs:
                out = work / f"splits-{n}-{label}-{pool}"
                result = run_split(checkout, download, out, work, pool)
                outs[label, pool] = (out, result["counts"])
                results.append({"rows": n, "code": label, "pool": pool, **result})
                print(f"  {label:6} pool={pool:8} wall {result['wall_s']:7.1f} s  CPU {result['cpu_s']:7.1f} s  "
                      f"peak RSS {result['rss_mb']:7.0f} MB", flush=True)
            (first_out, first_counts), *others = outs.values()
            for out, counts in others:
                if counts != first_counts or not same_pairs(first_out, out):
                    raise SystemExit(f"{out} differs from {first_out}")
            if others:
                print(f"  same counts and pairs in all {len(outs)} runs: {first_counts}", flush=True)
            if not args.keep:
                shutil.rmtree(download)
                for out, _ in outs.values():
                    shutil.rmtree(out)

    print("\n| rows | code | ARROW_DEFAULT_MEMORY_POOL | wall s | CPU s | CPU s per 1M rows | peak RSS MB |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['rows']:,} | {r['code']} | {r['pool']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['cpu_s'] / r['rows'] * 1e6:.1f} | {r['rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
