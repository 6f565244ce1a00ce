"""Every dataset's images go through img2dataset, into webdataset tars, with failures recorded.

Downloads are incremental per image. An image is identified by its URL (and, for a local file, its
size and modification time, so that a changed file is fetched again). Each run fetches only the
images of the current URL list that no pass has attempted yet: appended rows cost only themselves,
removed rows are dropped from what the download offers, and a caption edit fetches nothing (captions,
ids and splits are always taken from the current list). Changing an option that changes the stored
bytes (OUTPUT_OPTIONS) makes every stored image stale: the download starts over.

Layout of one dataset's `out_dir`:

    download.json             the dataset and the output options the images were made with
    urls.parquet              the current URL list (url, caption, captions, image_id, split, identity)
    passes.json               the passes, in the order they ran
    main.urls.parquet, main/  the first pass: its rows, and img2dataset's output for them:
        00000.tar               webdataset samples <key>.jpg, <key>.txt, <key>.json (successes only)
        00000.parquet           one row per input row: key, status, error_message, width, height, ...
        00000_stats.json        written last: img2dataset treats a shard with this file as done
    add-01.urls.parquet, add-01/      images a later URL list added, same layout
    retry-01.urls.parquet, retry-01/  images still failed after the passes before, same layout
    refused.json              rows the source refused to fetch (outside their dataset's folder), by reason

A row's final status is success if any pass downloaded its image, else the status of its image's
last attempt. A row of a shard that img2dataset never finished counts as failed (`not_downloaded`).
A pass none of whose images is in the current list any more is deleted.

Memory. samples_by_url (the split stage's input) streams: the URL list and the successful attempts
are read a row group or a shard at a time and sorted by URL through runs on disk (the lists are
written in row groups of URL_LIST_ROW_GROUP_ROWS for this), so it holds a bounded number of rows
whatever the list's length (benchmarks/split_memory.py measures it). download(), retry_failed(), download_report() and final_status() still
hold the whole URL list (and every attempt) in pandas, about 1 kB a row: the list comes whole from
pipeline.data.sources, and img2dataset itself reads a pass's whole URL list into one Arrow table
(Reader._save_to_arrow: pq.read_table) before it cuts it into per-shard files. It would read a
folder of lists one file at a time, shard numbers continuing (files of a multiple of
number_sample_per_shard rows would keep every key), but a pass's list is one `<pass>.urls.parquet`
here, which resume relies on.

img2dataset 1.47.0 facts this module relies on (read from its source, checked by the tests):
- incremental_mode="incremental" skips every shard whose `<shard>_stats.json` exists in the output
  folder and redoes the others from scratch. So: no other *.json may live in an output folder (its
  name would be parsed as a shard number), and this module deletes a "done" shard whose tar or
  parquet is missing, so that it is redone too.
- A sample's key is 10**ceil(log10(number_sample_per_shard)) * shard + its index in the shard, so
  the key gives the row of the pass's URL list back.
- Failures are per sample, never fatal: a missing file:// path is `failed_to_download` with
  urllib's "<urlopen error [Errno 2] No such file or directory: '...'>"; bytes that OpenCV cannot
  decode (a text file, a JPEG cut to its first ~150 bytes) are `failed_to_resize` with "Image
  decoding error". Every resize_mode, "no" included, decodes (and re-encodes) the image. A JPEG
  cut later, past its first scan lines, decodes with a grey bottom and counts as a success.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.checks import UserError
from pipeline.data.sorting import grouped, merge_runs, sort_to_runs
from pipeline.io import atomic_write, read_json, write_json

log = logging.getLogger(__name__)

URL_COLUMNS = ["url", "caption", "captions", "image_id", "split"]
ADDITIONAL_COLUMNS = ["image_id", "split", "captions"]
SAMPLE_COLUMNS = ["tar", "key", "url", "caption", "captions", "image_id", "split", "width", "height"]
MANIFEST = "download.json"
URLS = "urls.parquet"
REFUSED = "refused.json"  # rows the source refused to fetch, by reason
MAIN = "main"
PASSES = "passes.json"  # the pass names, in the order they ran
# The options that change what a finished shard holds; changing one makes old outputs stale.
OUTPUT_OPTIONS = (
    "image_size",
    "resize_mode",
    "resize_only_if_bigger",
    "encode_format",
    "encode_quality",
    "number_sample_per_shard",
)
NOT_DOWNLOADED = "not_downloaded"
# Rows per parquet row group of the URL lists this module writes (urls.parquet, <pass>.urls.parquet),
# which samples_by_url reads a row group at a time. pandas/pyarrow default to 1,048,576 rows a group:
# ~60 MB of Arrow at 100,000 rows, ~600 MB at a million. A list of fewer rows (the demo) is one
# group either way: the same bytes as before.
URL_LIST_ROW_GROUP_ROWS = 32_768
# img2dataset starts its worker pool and its logger process with "spawn": each child imports
# img2dataset afresh (torch via webdataset, wandb, albumentations: ~4 s of CPU each, and again
# every 5 shards, as the pool has maxtasksperchild=5), ~10 s per run even for 800 local files.
# Forking the already-imported parent brings that to ~1 s. Linux only; elsewhere keep spawn.
START_METHOD = "fork" if sys.platform == "linux" else "spawn"


class DownloadError(UserError, RuntimeError):
    """A download folder that cannot be used (no download yet, or made with other options)."""


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def download(dataset: str, urls_df: pd.DataFrame, out_dir: str | Path, cfg: Any) -> dict:
    """Download the images of `urls_df` (columns url, caption, captions, image_id, split) that no pass
    has attempted yet into `out_dir` with img2dataset, then re-download what failed, up to
    `cfg.retry_failed_passes` times (`cfg` is a `DownloadConfig`). An interrupted pass is resumed
    first: its finished shards are kept. Returns `download_report(out_dir)`."""
    out_dir = Path(out_dir)
    urls = _url_table(urls_df)
    urls["identity"] = _identities(urls)
    manifest = {"dataset": dataset, **{name: getattr(cfg, name) for name in OUTPUT_OPTIONS}}
    if _read_manifest(out_dir) != manifest:  # other bytes per image (or an older layout): start over
        _clear(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / MANIFEST, manifest)
    _write_parquet(urls, out_dir / URLS)
    # Rows the source refused (an image outside its dataset's folder): counted, never fetched.
    write_json(out_dir / REFUSED, dict(sorted(urls_df.attrs.get("refused", {}).items())))
    _drop_unused_passes(out_dir, set(urls["identity"]))
    for name in _passes(out_dir):  # finish an interrupted pass first
        _run_pass(out_dir / f"{name}.urls.parquet", out_dir / name, cfg)
    attempted = set().union(*(_pass_identities(out_dir, name) for name in _passes(out_dir)))
    new = urls[~urls["identity"].isin(attempted)].drop_duplicates("identity")
    if len(new) or not _passes(out_dir):
        name = MAIN if not _passes(out_dir) else f"add-{sum(n.startswith('add-') for n in _passes(out_dir)) + 1:02d}"
        log.info("%s: fetching %d new images into %s", out_dir, len(new), name)
        _add_pass(out_dir, name, new)
        _run_pass(out_dir / f"{name}.urls.parquet", out_dir / name, cfg)
    trailing_retries = len(list(itertools.takewhile(lambda n: n.startswith("retry-"), reversed(_passes(out_dir)))))
    for _ in range(cfg.retry_failed_passes - trailing_retries):
        if retry_failed(out_dir, cfg) is None:
            break  # nothing failed any more
    return download_report(out_dir)


def retry_failed(out_dir: str | Path, cfg: Any) -> dict | None:
    """One retry pass: re-download only the images of the current list whose rows are still failed,
    into the next `retry-NN/` (or finish an interrupted last pass). Returns the report, or None when
    no row failed."""
    out_dir = Path(out_dir)
    manifest = _checked_manifest(out_dir, cfg)
    passes = _passes(out_dir)
    if passes and not _pass_complete(out_dir / f"{passes[-1]}.urls.parquet", out_dir / passes[-1], manifest):
        name = passes[-1]  # interrupted: resume it rather than start another
    else:
        failed_rows = final_status(out_dir).query("status != 'success'")["row"].to_numpy()
        if len(failed_rows) == 0:
            log.info("%s: no failed rows to retry", out_dir)
            return None
        name = f"retry-{len(_retry_names(out_dir)) + 1:02d}"
        urls = pd.read_parquet(out_dir / URLS).iloc[failed_rows].drop_duplicates("identity")
        _add_pass(out_dir, name, urls)
        log.info("%s: retrying %d failed images into %s", out_dir, len(urls), name)
    _run_pass(out_dir / f"{name}.urls.parquet", out_dir / name, cfg)
    return download_report(out_dir)


def download_report(out_dir: str | Path) -> dict:
    """Counts of the final status of every row of the current URL list, across all passes."""
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise DownloadError(f"{out_dir}: no download here ({MANIFEST} missing)")
    final = final_status(out_dir)
    failed = final[final["status"] != "success"]
    rows, success = len(final), len(final) - len(failed)
    refused = read_json(out_dir / REFUSED) if (out_dir / REFUSED).exists() else {}
    return {
        "dataset": manifest["dataset"],
        "rows": rows,
        "success": success,
        "failed": len(failed),
        "success_rate": round(success / rows, 6) if rows else 0.0,
        "recovered_by_retry": int((final["status"].eq("success") & final["retried"]).sum()),
        "retry_passes": len(_retry_names(out_dir)),
        "failed_by_status": _counts(failed["status"]),
        "failed_by_error": _counts(failed["error_message"].map(normalise_error)),
        "refused": sum(refused.values()),
        "refused_by_reason": refused,
    }


def successful_samples(out_dir: str | Path) -> pd.DataFrame:
    """One row per downloaded image of the current URL list, deduplicated by URL: where it is (`tar`
    relative to out_dir, img2dataset's `key`; the first pass that got it) and what it is (url, size,
    and captions, image_id and split as the current list says)."""
    out_dir = Path(out_dir)
    if _read_manifest(out_dir) is None:
        raise DownloadError(f"{out_dir}: no download here ({MANIFEST} missing)")
    attempts = _attempts(out_dir)
    got = attempts[attempts["status"] == "success"].sort_values("pass", kind="stable").drop_duplicates("identity")
    urls = pd.read_parquet(out_dir / URLS)
    samples = urls.merge(got[["identity", "tar", "key", "width", "height"]], on="identity", how="inner")
    if samples.empty:
        return pd.DataFrame({c: pd.Series(dtype=str) for c in SAMPLE_COLUMNS})
    samples = samples.drop_duplicates("url", keep="first")
    samples[["width", "height"]] = samples[["width", "height"]].astype("int64")
    return samples.reset_index(drop=True)[SAMPLE_COLUMNS]


def samples_by_url(out_dir: str | Path, scratch: Path) -> Iterator[dict]:
    """successful_samples(out_dir) sorted by URL, as a stream of dicts (SAMPLE_COLUMNS) in bounded
    memory, whatever the number of rows: the current URL list and the successful attempts are each
    sorted by URL through run files under `scratch` (see pipeline.data.sorting), then merged. Each URL
    gets the first row of the list with that URL whose image some pass got, and the first pass that
    got it: the rows successful_samples keeps."""
    out_dir = Path(out_dir)
    if _read_manifest(out_dir) is None:
        raise DownloadError(f"{out_dir}: no download here ({MANIFEST} missing)")
    (scratch / "urls").mkdir(parents=True)
    (scratch / "got").mkdir(parents=True)
    url_runs = sort_to_runs(_numbered_urls(out_dir / URLS), ["url", "row"], scratch / "urls")
    got_runs = sort_to_runs(_successes(out_dir), ["url", "identity", "pass"], scratch / "got")
    got = grouped(merge_runs(got_runs, ["url", "identity", "pass"]), "url")
    got_url, got_rows = next(got, (None, []))
    for url, rows in grouped(merge_runs(url_runs, ["url", "row"]), "url"):
        while got_url is not None and got_url < url:
            got_url, got_rows = next(got, (None, []))
        if got_url != url:
            continue  # no pass got this URL's image
        first_pass = {}
        for success in got_rows:  # sorted by pass within an identity: the first is the first pass
            first_pass.setdefault(success["identity"], success)
        for row in rows:  # in list order
            if row["identity"] in first_pass:
                success = first_pass[row["identity"]]
                yield {**{c: row[c] for c in URL_COLUMNS}, **{c: success[c] for c in ("tar", "key", "width", "height")}}
                break


def final_status(out_dir: str | Path) -> pd.DataFrame:
    """Per row of the current urls.parquet: `row`, `status`, `error_message` (of its image's last
    attempt unless one succeeded) and `retried` (whether a retry pass attempted its image)."""
    out_dir = Path(out_dir)
    identity = pd.read_parquet(out_dir / URLS, columns=["identity"])["identity"] if (out_dir / URLS).exists() \
        else pd.Series([], dtype=str)
    final = pd.DataFrame({"row": range(len(identity)), "identity": identity.to_numpy()})
    final["status"] = NOT_DOWNLOADED
    final["error_message"] = "shard not finished by img2dataset"
    final["retried"] = False
    attempts = _attempts(out_dir)
    if len(attempts):
        attempts = attempts.sort_values(["identity", "pass"], kind="stable")
        attempts["ok"] = attempts["status"] == "success"
        last = attempts.drop_duplicates("identity", keep="last").set_index("identity")
        ok = attempts.groupby("identity")["ok"].any()
        last.loc[ok, "status"] = "success"
        last.loc[ok, "error_message"] = None
        retried = set(attempts.loc[attempts["retry"], "identity"])
        known = final["identity"].isin(last.index)
        final.loc[known, "status"] = last.loc[final.loc[known, "identity"], "status"].to_numpy()
        final.loc[known, "error_message"] = last.loc[final.loc[known, "identity"], "error_message"].to_numpy()
        final["retried"] = final["identity"].isin(retried)
    return final.drop(columns="identity")


def normalise_error(message: Any) -> str:
    """An error message without the paths and URLs that make each one unique."""
    if message is None or (isinstance(message, float) and math.isnan(message)):
        return "unknown"
    text = re.sub(r"'[^']*[/.][^']*'", "<path>", str(message))  # quoted paths, URLs, hosts
    text = re.sub(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+", "<url>", text)
    return text[:200]


# --------------------------------------------------------------------------------------------
# One img2dataset run
# --------------------------------------------------------------------------------------------


def _run_pass(urls_path: Path, pass_dir: Path, cfg: Any) -> None:
    manifest = _read_manifest(urls_path.parent)
    _drop_incomplete_shards(pass_dir)
    if _pass_complete(urls_path, pass_dir, manifest):
        log.info("%s: all shards done, skipping img2dataset", pass_dir)
        return
    if cfg.distributor != "multiprocessing" and importlib.util.find_spec(cfg.distributor) is None:
        # img2dataset's ray distributor silently does nothing when ray is not installed
        raise DownloadError(f"data.download.distributor: {cfg.distributor!r} needs the package {cfg.distributor}")
    if cfg.distributor == "pyspark":
        _spark_session(cfg)
    start = time.perf_counter()
    with _img2dataset() as img2dataset_download:
        img2dataset_download(
            url_list=str(urls_path),
            output_folder=str(pass_dir),
            input_format="parquet",
            url_col="url",
            caption_col="caption",
            save_additional_columns=list(ADDITIONAL_COLUMNS),
            output_format="webdataset",
            incremental_mode="incremental",
            enable_wandb=False,
            image_size=cfg.image_size,
            resize_mode=cfg.resize_mode,
            resize_only_if_bigger=cfg.resize_only_if_bigger,
            encode_format=cfg.encode_format,
            encode_quality=cfg.encode_quality,
            processes_count=cfg.processes_count,
            thread_count=cfg.thread_count,
            number_sample_per_shard=cfg.number_sample_per_shard,
            timeout=cfg.timeout,
            retries=cfg.retries,
            distributor=cfg.distributor,
        )
    log.info("%s: img2dataset pass took %.1f s", pass_dir, time.perf_counter() - start)


def _spark_session(cfg: Any):
    """The Spark session img2dataset's pyspark distributor uses (it makes a 16g one only when none is
    active): local mode with processes_count cores and data.download.spark_driver_memory. Spark starts
    its Python workers with `python3` from PATH, which outside an activated venv lacks img2dataset:
    they get this interpreter instead (set before the JVM starts, which reads them)."""
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    return (SparkSession.builder.master(f"local[{cfg.processes_count}]").appName("grr-coca download")
            .config("spark.driver.memory", cfg.spark_driver_memory)
            .config("spark.ui.enabled", "false")  # no web UI port per download
            .getOrCreate())


@contextlib.contextmanager
def _img2dataset(start_method: str | None = None):
    """img2dataset.download, with the small workarounds img2dataset 1.47.0 needs here."""
    # albumentations asks pypi.org for a newer version on every import (2 s timeout), in every
    # child process too; the variable is inherited by the children.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from img2dataset import distributor, logger  # slow (~4 s): import lazily
    from img2dataset import download as img2dataset_download

    start_method = start_method or START_METHOD
    saved_context = distributor.get_context
    saved_popen = logger.LoggerProcess.__dict__.get("_Popen")
    saved_sigint = signal.getsignal(signal.SIGINT)
    if start_method != "spawn":  # see START_METHOD
        distributor.get_context = lambda _method=None: multiprocessing.get_context(start_method)
        process_class = multiprocessing.get_context(start_method).Process
        logger.LoggerProcess._Popen = staticmethod(process_class._Popen)
    try:
        yield img2dataset_download
    except SystemExit as e:
        # img2dataset's SIGINT handler calls sys.exit(0): an interrupted download would look
        # finished to the caller (and to DVC). Make it an interruption again.
        raise KeyboardInterrupt(f"img2dataset interrupted (exit {e.code})") from None
    finally:
        distributor.get_context = saved_context
        if saved_popen is not None:
            logger.LoggerProcess._Popen = saved_popen
        elif "_Popen" in logger.LoggerProcess.__dict__:
            del logger.LoggerProcess._Popen  # back to SpawnProcess._Popen
        signal.signal(signal.SIGINT, saved_sigint)  # img2dataset replaces it for good


# --------------------------------------------------------------------------------------------
# Reading the passes back
# --------------------------------------------------------------------------------------------


def _attempts(out_dir: Path) -> pd.DataFrame:
    """Every recorded attempt: identity, status, error_message, pass (its place in passes.json),
    retry (a retry pass?), and where a success is: tar, key, width, height."""
    manifest = _read_manifest(out_dir) or {}
    per_shard = manifest.get("number_sample_per_shard", 1)
    key_base = 10 ** math.ceil(math.log10(per_shard))  # img2dataset's compute_key
    frames = []
    for index, name in enumerate(_passes(out_dir)):
        identity = pd.read_parquet(out_dir / f"{name}.urls.parquet", columns=["identity"])["identity"].to_numpy()
        for shard, parquet in _finished_shards(out_dir / name):
            df = pd.read_parquet(parquet, columns=["key", "status", "error_message", "width", "height"])
            position = shard * per_shard + df["key"].astype("int64") % key_base  # the row of the pass's list
            df["identity"] = identity[position.to_numpy()]
            df["pass"], df["retry"], df["tar"] = index, name.startswith("retry-"), f"{name}/{parquet.stem}.tar"
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["key", "status", "error_message", "width", "height", "identity", "pass",
                                     "retry", "tar"])
    return pd.concat(frames, ignore_index=True)


def _numbered_urls(urls_path: Path) -> Iterator[pa.Table]:
    """The URL list a row group at a time (URL_LIST_ROW_GROUP_ROWS), each row with its `row` number in
    the list. Not iter_batches: its reader reads row groups ahead on other threads, unboundedly while
    the consumer (the sort) is slower, ~250 MB at a million rows."""
    start = 0
    columns = [*URL_COLUMNS, "identity"]
    file = pq.ParquetFile(urls_path)
    for group in range(file.num_row_groups):
        table = file.read_row_group(group, columns=columns)
        yield table.append_column("row", pa.array(range(start, start + len(table)), pa.int64()))
        start += len(table)


def _successes(out_dir: Path) -> Iterator[pa.Table]:
    """Every successful attempt, one finished shard at a time: url, identity, pass (its place in
    passes.json) and where the image is: tar, key, width, height."""
    per_shard = (_read_manifest(out_dir) or {}).get("number_sample_per_shard", 1)
    key_base = 10 ** math.ceil(math.log10(per_shard))  # img2dataset's compute_key
    for index, name in enumerate(_passes(out_dir)):
        finished = dict(_finished_shards(out_dir / name))
        for shard, listed in _shard_rows(out_dir / f"{name}.urls.parquet", per_shard):
            if shard not in finished:
                continue
            attempts = pq.read_table(finished[shard], columns=["key", "status", "width", "height"])
            ok = attempts.filter(pc.equal(attempts["status"], "success"))
            position = ok["key"].to_numpy(zero_copy_only=False).astype("int64") % key_base  # its row in the shard
            yield pa.table({
                "url": listed["url"].take(position),
                "identity": listed["identity"].take(position),
                "pass": pa.array([index] * len(ok), pa.int64()),
                "tar": pa.array([f"{name}/{finished[shard].stem}.tar"] * len(ok), pa.string()),
                "key": ok["key"],
                "width": ok["width"].cast(pa.int64()),
                "height": ok["height"].cast(pa.int64()),
            })


def _shard_rows(urls_path: Path, per_shard: int) -> Iterator[tuple[int, pa.Table]]:
    """(shard number, its rows of a pass's URL list: url, identity) for every shard img2dataset makes
    of the list (`per_shard` consecutive rows each), reading the list in order, a shard at a time."""
    shard, pending = 0, None
    file = pq.ParquetFile(urls_path)
    for group in range(file.num_row_groups):  # not iter_batches: see _numbered_urls
        table = file.read_row_group(group, columns=["url", "identity"])
        pending = table if pending is None else pa.concat_tables([pending, table])
        while pending.num_rows >= per_shard:
            yield shard, pending.slice(0, per_shard)
            shard, pending = shard + 1, pending.slice(per_shard)
    if pending is not None and pending.num_rows:
        yield shard, pending


def _finished_shards(pass_dir: Path) -> list[tuple[int, Path]]:
    """(shard number, parquet) of the shards img2dataset finished (stats written last)."""
    shards = []
    for stats in sorted(pass_dir.glob("*_stats.json")):
        parquet = pass_dir / stats.name.replace("_stats.json", ".parquet")
        if parquet.exists():
            shards.append((int(stats.name.split("_")[0]), parquet))
    return shards


def _drop_incomplete_shards(pass_dir: Path) -> None:
    """Remove what is left of a shard whose stats file exists but whose tar or parquet does not,
    so that img2dataset's incremental mode redoes it instead of skipping it."""
    for stats in pass_dir.glob("*_stats.json"):
        stem = stats.name.replace("_stats.json", "")
        if not (pass_dir / f"{stem}.tar").exists() or not (pass_dir / f"{stem}.parquet").exists():
            log.warning("%s: shard %s is incomplete; it will be downloaded again", pass_dir, stem)
            for path in (stats, pass_dir / f"{stem}.tar", pass_dir / f"{stem}.parquet"):
                path.unlink(missing_ok=True)


def _pass_complete(urls_path: Path, pass_dir: Path, manifest: dict | None) -> bool:
    if manifest is None or not urls_path.exists():
        return False
    rows = pq.ParquetFile(urls_path).metadata.num_rows
    if rows and not pass_dir.is_dir():
        return False
    expected = set(range(math.ceil(rows / manifest["number_sample_per_shard"])))
    return expected <= {shard for shard, _ in _finished_shards(pass_dir)}


def _passes(out_dir: Path) -> list[str]:
    return read_json(out_dir / PASSES) if (out_dir / PASSES).exists() else []


def _retry_names(out_dir: Path) -> list[str]:
    return [name for name in _passes(out_dir) if name.startswith("retry-")]


def _pass_identities(out_dir: Path, name: str) -> set[str]:
    return set(pd.read_parquet(out_dir / f"{name}.urls.parquet", columns=["identity"])["identity"])


def _add_pass(out_dir: Path, name: str, urls: pd.DataFrame) -> None:
    """Register a pass: its URL list first, then its name in passes.json (an interrupted registration
    leaves an unlisted list, which the next pass of that name overwrites)."""
    _write_parquet(urls.reset_index(drop=True), out_dir / f"{name}.urls.parquet")
    write_json(out_dir / PASSES, [*_passes(out_dir), name])


def _drop_unused_passes(out_dir: Path, current: set[str]) -> None:
    """Delete the passes none of whose images is in the current URL list (their rows were removed)."""
    keep = []
    for name in _passes(out_dir):
        if _pass_identities(out_dir, name) & current:
            keep.append(name)
            continue
        log.info("%s: pass %s holds no image of the current list; removing it", out_dir, name)
        shutil.rmtree(out_dir / name, ignore_errors=True)
        (out_dir / f"{name}.urls.parquet").unlink(missing_ok=True)
    if keep != _passes(out_dir):
        write_json(out_dir / PASSES, keep)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _url_table(urls_df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in URL_COLUMNS if c not in urls_df.columns]
    if missing:
        raise ValueError(f"URL list lacks columns {missing}; expected {URL_COLUMNS}")
    urls = urls_df[URL_COLUMNS].reset_index(drop=True)
    for column in URL_COLUMNS:
        bad = urls.index[urls[column].isna()]
        if len(bad):
            raise ValueError(f"URL list row {bad[0]}: {column} is missing")
    urls = urls.astype(str)
    empty = urls.index[urls["url"].str.strip().eq("")]
    if len(empty):
        raise ValueError(f"URL list row {empty[0]}: url is empty")
    return urls


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write whole or not at all: an interrupted write must not leave a URL list to resume from."""
    atomic_write(path, lambda f: df.to_parquet(f, index=False, row_group_size=URL_LIST_ROW_GROUP_ROWS))


def _identities(urls: pd.DataFrame) -> pd.Series:
    """What each row's image is: its URL, and for a local file also its size and modification time,
    so that a changed file (a regenerated demo, a fixed image) is fetched again."""

    def stamp(url: str) -> str:
        if not url.startswith("file:"):
            return ""
        try:
            st = os.stat(url2pathname(urlparse(url).path))
        except OSError:
            return "missing"
        return f"{st.st_size}:{st.st_mtime_ns}"

    return urls["url"] + "\t" + urls["url"].map(stamp)


def _read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _checked_manifest(out_dir: Path, cfg: Any) -> dict:
    manifest = _read_manifest(out_dir)
    if manifest is None or not (out_dir / URLS).exists() or not _passes(out_dir):
        raise DownloadError(f"{out_dir}: nothing to retry: no download here yet (run the download first)")
    changed = [name for name in OUTPUT_OPTIONS if manifest.get(name) != getattr(cfg, name)]
    if changed:
        raise DownloadError(
            f"{out_dir}: data.download options {changed} differ from those of the download here; "
            "rerun the whole download instead of retrying"
        )
    return manifest


def _clear(out_dir: Path) -> None:
    """Remove what a download with other output options (or an older layout) left: only the files
    this module writes."""
    if not out_dir.exists():
        return
    stale = [out_dir / URLS, out_dir / MANIFEST, out_dir / PASSES, out_dir / REFUSED,
             *out_dir.glob("main*"), *out_dir.glob("add-[0-9][0-9]*"), *out_dir.glob("retry-[0-9][0-9]*")]
    if any(p.exists() for p in stale):
        log.warning("%s: output options changed; removing the previous download", out_dir)
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in Counter(values).most_common()}
