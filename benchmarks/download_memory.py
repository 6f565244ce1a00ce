"""Does the download stage's memory level off as CC12M's URL list grows? Peak RSS, wall and CPU
seconds of `stages/download.py cc12m` on a CC12M TSV of N rows whose images are already downloaded.

    python benchmarks/download_memory.py [--rows 100000 1000000 3000000] [--base DIR --base-rows 100000 1000000]
                                         [--work DIR] [--keep]

No image is fetched. For each N the script fabricates a finished download of N rows with
benchmarks/split_memory.py (CC12M-like URLs and captions, 1% repeated URLs; a `main` pass that failed
3% of its images and a `retry-01` pass that got half of those back; img2dataset's per-shard parquets
and stats files, and empty tars: the stage never opens one), writes the same rows as a CC12M TSV
(url<TAB>caption), and runs the stage
on both with `data.download.retry_failed_passes: 1`. Every image of the list is in a finished pass, so
img2dataset is never started: what is measured is the stage's own work on the list, whatever its
length: reading the TSV, writing urls.parquet, finding the images no pass holds (none) and the passes
no current image is in (none), and the report across both passes. (How img2dataset itself reads a new
pass's list is measured by benchmarks/data_scale.py, which downloads for real.)

The stage runs as a child process under benchmarks/peak_rss.py's wrapper (its own VmHWM), with TMPDIR
under --work. `--base DIR` runs another checkout's stages/download.py (e.g. the commit before the
stage streamed: `git worktree add --detach /tmp/dl-base <commit>`) on the same folders for the N in
`--base-rows`, after this checkout's run, and checks that both wrote the same report. A fabricated
download uses one file per pass list (the layout before pass lists were folders), which both read.
Takes about 1.5 GB of disk per million rows under --work while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peak_rss import add_comparison_arguments, print_table, run_measured, work_folder  # noqa: E402
from benchmarks.split_memory import fabricate  # noqa: E402
from pipeline.data import download as dl  # noqa: E402


def add_empty_tars(download: Path) -> None:
    """An empty tar beside each finished shard: the stage redoes a shard whose tar is missing, and
    never opens one."""
    for stats in download.glob("*/*_stats.json"):
        with tarfile.open(stats.with_name(stats.name.replace("_stats.json", ".tar")), "w"):
            pass


def write_tsv(download: Path, tsv: Path) -> None:
    """The fabricated URL list as CC12M's TSV, a row group at a time."""
    file = pq.ParquetFile(download / dl.URLS)
    with tsv.open("w", encoding="utf-8") as f:
        for group in range(file.num_row_groups):
            table = file.read_row_group(group, columns=["url", "caption"])
            f.writelines(f"{url}\t{caption}\n" for url, caption in zip(table["url"].to_pylist(),
                                                                       table["caption"].to_pylist()))


def write_params(work: Path, tsv: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["sources"] = {"cc12m_tsv": str(tsv)}
    params["data"]["download"] = {"retry_failed_passes": 1}  # retry-01 exists: no further pass
    path = work / f"params-{tsv.stem}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_download(checkout: Path, params: Path, download: Path, work: Path, label: str) -> dict:
    """One download stage run as a child process; its wall s, CPU s, peak RSS and report."""
    report = work / f"report-{label}.json"
    result = run_measured(checkout / "stages" / "download.py", ["cc12m", "--params", str(params), "--out",
                          str(download), "--report", str(report)], work / f"peak-{label}", cwd=checkout,
                          env={**os.environ, "TMPDIR": str(work)})
    return {**result, "report": json.loads(report.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_comparison_arguments(parser, "rows", [100_000, 1_000_000, 3_000_000], [100_000, 1_000_000],
                             "stages/download.py", "downloads")
    args = parser.parse_args()

    results = []
    with work_folder("download-memory-", args.work, args.keep) as work:
        for n in args.rows:
            download, tsv = work / f"download-{n}", work / f"cc12m-{n}.tsv"
            start = time.perf_counter()
            fabricate(download, n, ROOT / "params.yaml")
            add_empty_tars(download)
            write_tsv(download, tsv)
            params = write_params(work, tsv)
            print(f"{n:,} rows fabricated in {time.perf_counter() - start:.0f} s", flush=True)
            runs = [("branch" if args.base else "this", ROOT)]
            if args.base and n in args.base_rows:
                runs.append(("base", args.base.resolve()))
            reports = []
            for label, checkout in runs:
                result = run_download(checkout, params, download, work, f"{n}-{label}")
                reports.append(result.pop("report"))
                results.append({"rows": n, "code": label, **result})
                print(f"  {label:6} wall {result['wall_s']:7.1f} s  CPU {result['cpu_s']:7.1f} s  "
                      f"peak RSS {result['rss_mb']:7.0f} MB  {reports[-1]['success']:,}/{reports[-1]['rows']:,} "
                      f"downloaded", flush=True)
            if any(report != reports[0] for report in reports):
                raise SystemExit(f"{n:,} rows: the reports differ: {reports}")
            if not args.keep:
                shutil.rmtree(download)
                tsv.unlink()

    print_table(results, "rows")


if __name__ == "__main__":
    main()
