"""Every dataset's images go through img2dataset, into webdataset tars, with failures recorded.

Downloads are incremental per image. An image is identified by its URL (and, for a local file, its
size and a hash of its bytes, so that a changed file is fetched again). Each run fetches only the
images of the current URL list that no pass has attempted yet: appended rows cost only themselves,
removed rows are dropped from what the download offers, and a caption edit fetches nothing (captions,
ids and splits are always taken from the current list). Changing an option that changes the stored
bytes (OUTPUT_OPTIONS) makes every stored image stale: the download starts over.

Layout of one dataset's `out_dir`:

    download.json             the dataset and the output options the images were made with
    urls.parquet              the current URL list (url, caption, captions, image_id, split, identity)
    passes.json               the passes, in the order they ran
    main.urls/, main/         the first pass: its rows (part-00000.parquet, ...), and img2dataset's
                              output for them:
        00000.tar               webdataset samples <key>.jpg, <key>.txt, <key>.json (successes only)
        00000.parquet           one row per input row: key, status, error_message, width, height, ...
        00000_stats.json        written last: img2dataset treats a shard with this file as done
    add-01.urls/, add-01/     images a later URL list added, same layout
    retry-01.urls/, retry-01/ images still failed after the passes before, same layout
    refused.json              rows the source refused to fetch (outside their dataset's folder), by reason

(A download made before pass lists were folders has `<pass>.urls.parquet` files: they are read the same.)

A row's final status is success if any pass downloaded its image, else the status of its image's
last attempt. A row of a shard that img2dataset never finished counts as failed (`not_downloaded`).
A pass none of whose images is in the current list any more is deleted.

Memory does not grow with the number of rows (CC12M has 10.9 million), except by one byte a row for
the masks of rows to fetch (`_add_pass`):
- the URL list comes in chunks (pipeline.data.sources reads CC12M's TSV that way) and is written a row
  group (URL_LIST_ROW_GROUP_ROWS) at a time;
- what is known of each image (its rows in the current list, the passes that list it, their attempts)
  is gathered by sorting records by identity through runs on disk (pipeline.data.sorting), then
  merged; the report, the rows to retry, the new rows and the passes still used come from that stream,
  as does samples_by_url (the split stage's input), sorted by URL the same way;
- img2dataset reads a pass's list one file at a time (pq.read_table of each, in Reader._save_to_arrow),
  so a pass's list is a folder of parts of PASS_LIST_PART_ROWS rows (a multiple of
  number_sample_per_shard, which keeps img2dataset's shard numbers, and so its keys, continuous).
benchmarks/download_memory.py measures the stage's peak memory on lists of up to millions of rows.

img2dataset 1.47.0 facts this module relies on (read from its source, checked by the tests):
- incremental_mode="incremental" skips every shard whose `<shard>_stats.json` exists in the output
  folder and redoes the others from scratch. So: no other *.json may live in an output folder (its
  name would be parsed as a shard number), and this module deletes a "done" shard whose tar or
  parquet is missing, so that it is redone too.
- A folder given as url_list is read file by file in name order, the shard numbers of each file
  continuing those of the one before.
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
import hashlib
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
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.checks import UserError
from pipeline.data.parquet import row_groups
from pipeline.data.sorting import grouped, merge_runs, sort_to_runs
from pipeline.io import atomic_write, read_json, write_json

log = logging.getLogger(__name__)

URL_COLUMNS = ["url", "caption", "captions", "image_id", "split"]
LIST_SCHEMA = pa.schema([(column, pa.string()) for column in [*URL_COLUMNS, "identity"]])  # of every URL list here
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
# Rows per parquet row group of the URL lists this module writes, which it reads a row group at a
# time. pandas/pyarrow default to 1,048,576 rows a group: ~60 MB of Arrow at 100,000 rows, ~600 MB
# at a million.
URL_LIST_ROW_GROUP_ROWS = 32_768
# Rows per part file of a pass's list, rounded down to a multiple of number_sample_per_shard (at
# least one shard): img2dataset holds one part in Arrow at a time (~40 MB of CC12M rows).
PASS_LIST_PART_ROWS = 131_072
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


def download(dataset: str, urls: pd.DataFrame | Iterable[pd.DataFrame], out_dir: str | Path, cfg: Any,
             refused: Mapping[str, int] | None = None) -> dict:
    """Download the images of the URL list `urls` that no pass has attempted yet into `out_dir` with
    img2dataset, then re-download what failed, up to `cfg.retry_failed_passes` times (`cfg` is a
    `DownloadConfig`). An interrupted pass is resumed first: its finished shards are kept. Returns
    `download_report(out_dir)`.

    `urls`: a DataFrame with columns URL_COLUMNS, or the chunks of one (read lazily, so that a list of
    millions of rows streams through). `refused`: the rows the source refused, by reason, read once
    `urls` is consumed (a DataFrame's attrs["refused"] by default)."""
    out_dir = Path(out_dir)
    if isinstance(urls, pd.DataFrame):
        refused = urls.attrs.get("refused", {}) if refused is None else refused
        urls = [urls]
    manifest = {"dataset": dataset, **{name: getattr(cfg, name) for name in OUTPUT_OPTIONS}}
    if _read_manifest(out_dir) != manifest:  # other bytes per image (or an older layout): start over
        _clear(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / MANIFEST, manifest)
    rows = _write_url_list(urls, out_dir / URLS)
    # Rows the source refused (an image outside its dataset's folder): counted, never fetched.
    write_json(out_dir / REFUSED, dict(sorted((refused or {}).items())))
    new, used = np.zeros(rows, dtype=bool), set()
    for image in _images(out_dir, attempts=False):
        if image.rows:
            used |= image.passes
            if not image.passes:  # no pass lists it: fetch it once, for its first row
                new[image.rows[0]] = True
    _drop_unused_passes(out_dir, used)
    for name in _passes(out_dir):  # finish an interrupted pass first
        _run_pass(_pass_list(out_dir, name), out_dir / name, cfg)
    if new.any() or not _passes(out_dir):
        name = MAIN if not _passes(out_dir) else f"add-{sum(n.startswith('add-') for n in _passes(out_dir)) + 1:02d}"
        log.info("%s: fetching %d new images into %s", out_dir, int(new.sum()), name)
        _add_pass(out_dir, name, new)
        _run_pass(_pass_list(out_dir, name), out_dir / name, cfg)
    trailing_retries = len(list(itertools.takewhile(lambda n: n.startswith("retry-"), reversed(_passes(out_dir)))))
    for _ in range(cfg.retry_failed_passes - trailing_retries):
        if not _retry_pass(out_dir, cfg):
            break  # nothing failed any more
    return download_report(out_dir)


def retry_failed(out_dir: str | Path, cfg: Any) -> dict | None:
    """One retry pass: re-download only the images of the current list whose rows are still failed,
    into the next `retry-NN/` (or finish an interrupted last pass). Returns the report, or None when
    no row failed."""
    return download_report(out_dir) if _retry_pass(Path(out_dir), cfg) else None


def download_report(out_dir: str | Path) -> dict:
    """Counts of the final status of every row of the current URL list, across all passes."""
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise DownloadError(f"{out_dir}: no download here ({MANIFEST} missing)")
    if not (out_dir / URLS).exists():
        raise DownloadError(f"{out_dir}: no URL list ({URLS}): the download stopped before writing it; run it again")
    rows = success = recovered = 0
    failed_by_status, failed_by_error = Counter(), Counter()
    for _, status, error_message, retried in _final_statuses(out_dir):
        rows += 1
        if status == "success":
            success += 1
            recovered += retried
        else:
            failed_by_status[status] += 1
            failed_by_error[normalise_error(error_message)] += 1
    refused = read_json(out_dir / REFUSED) if (out_dir / REFUSED).exists() else {}
    return {
        "dataset": manifest["dataset"],
        "rows": rows,
        "success": success,
        "failed": rows - success,
        "success_rate": round(success / rows, 6) if rows else 0.0,
        "recovered_by_retry": recovered,
        "retry_passes": len(_retry_names(out_dir)),
        "failed_by_status": _counts(failed_by_status),
        "failed_by_error": _counts(failed_by_error),
        "refused": sum(refused.values()),
        "refused_by_reason": refused,
    }


def samples_by_url(out_dir: str | Path, scratch: Path) -> Iterator[dict]:
    """One dict (SAMPLE_COLUMNS) per downloaded image of the current URL list, sorted by URL and
    deduplicated by URL: where it is (`tar` relative to out_dir, img2dataset's `key`) and what it is
    (url, size, and captions, image_id and split as the current list says). A stream in bounded
    memory, whatever the number of rows: the current URL list and the successful attempts are each
    sorted by URL through run files under `scratch` (see pipeline.data.sorting), then merged. Each URL
    gets the first row of the list with that URL whose image some pass got, and the first pass that
    got it."""
    out_dir = Path(out_dir)
    if _read_manifest(out_dir) is None:
        raise DownloadError(f"{out_dir}: no download here ({MANIFEST} missing)")
    (scratch / "urls").mkdir(parents=True)
    (scratch / "got").mkdir(parents=True)
    url_runs = sort_to_runs(_list_tables(out_dir / URLS, LIST_SCHEMA.names, numbered=True), ["url", "row"],
                            scratch / "urls")
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
    attempt unless one succeeded) and `retried` (whether a retry pass attempted its image). A frame
    of every row, to inspect a download; the report streams the same statuses."""
    rows = sorted(_final_statuses(Path(out_dir)))
    return pd.DataFrame(rows, columns=["row", "status", "error_message", "retried"])


def normalise_error(message: Any) -> str:
    """An error message without the paths and URLs that make each one unique."""
    if message is None or (isinstance(message, float) and math.isnan(message)):
        return "unknown"
    text = re.sub(r"'[^']*[/.][^']*'", "<path>", str(message))  # quoted paths, URLs, hosts
    text = re.sub(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+", "<url>", text)
    return text[:200]


def _retry_pass(out_dir: Path, cfg: Any) -> bool:
    """retry_failed without the report; False when no row failed."""
    manifest = _checked_manifest(out_dir, cfg)
    passes = _passes(out_dir)
    if passes and not _pass_complete(_pass_list(out_dir, passes[-1]), out_dir / passes[-1], manifest):
        name = passes[-1]  # interrupted: resume it rather than start another
    else:
        failed = np.zeros(pq.ParquetFile(out_dir / URLS).metadata.num_rows, dtype=bool)
        retry_passes = _retry_indices(out_dir)
        for image in _images(out_dir, attempts=True):
            if image.rows and image.final(retry_passes)[0] != "success":
                failed[image.rows[0]] = True  # the image once, for its first row
        if not failed.any():
            log.info("%s: no failed rows to retry", out_dir)
            return False
        name = f"retry-{len(_retry_names(out_dir)) + 1:02d}"
        _add_pass(out_dir, name, failed)
        log.info("%s: retrying %d failed images into %s", out_dir, int(failed.sum()), name)
    _run_pass(_pass_list(out_dir, name), out_dir / name, cfg)
    return True


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
# What is known of each image, in bounded memory
# --------------------------------------------------------------------------------------------


@dataclass
class _Image:
    """One image (identity): its rows in the current list, the passes whose lists hold it, and its
    attempts in finished shards as (pass, status, error_message), in pass order."""

    rows: list[int] = field(default_factory=list)
    passes: set[int] = field(default_factory=set)
    attempts: list[tuple[int, str, str | None]] = field(default_factory=list)

    def final(self, retry_passes: set[int]) -> tuple[str, str | None, bool]:
        """(status, error_message, retried): success if any attempt succeeded, else its last attempt's."""
        retried = any(index in retry_passes for index, _, _ in self.attempts)
        if any(status == "success" for _, status, _ in self.attempts):
            return "success", None, retried
        if self.attempts:
            _, status, error_message = self.attempts[-1]
            return status, error_message, retried
        return NOT_DOWNLOADED, "shard not finished by img2dataset", False


_RECORD_SCHEMA = pa.schema([("identity", pa.string()), ("source", pa.int8()), ("pass", pa.int64()),
                            ("row", pa.int64()), ("status", pa.string()), ("error_message", pa.string())])
_RECORD_KEYS = ["identity", "source", "pass", "row"]
_CURRENT, _LISTED = 0, 1  # a record's source: a row of the current list, or of a pass's list


def _images(out_dir: Path, attempts: bool) -> Iterator[_Image]:
    """Every image of the current list or of a pass's list, in identity order (`attempts`: with the
    attempts of finished shards, else with none): one record per row of each list, sorted by identity
    through runs in a scratch folder under out_dir (removed when the stream ends), then grouped."""
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".sort-") as scratch:
        runs = sort_to_runs(_records(out_dir, attempts), _RECORD_KEYS, Path(scratch))
        for _, records in grouped(merge_runs(runs, _RECORD_KEYS), "identity"):
            image = _Image()
            for record in records:
                if record["source"] == _CURRENT:
                    image.rows.append(record["row"])
                else:
                    image.passes.add(record["pass"])
                    if record["status"] is not None:
                        image.attempts.append((record["pass"], record["status"], record["error_message"]))
            yield image


def _records(out_dir: Path, attempts: bool) -> Iterator[pa.Table]:
    """_images' records: (identity, _CURRENT, -1, row) per row of the current list; (identity,
    _LISTED, pass, its row in the pass's list, status, error_message) per row of a pass's list, the
    status null where its shard is unfinished (or `attempts` is false)."""
    for table in _list_tables(out_dir / URLS, ["identity"], numbered=True):
        n = len(table)
        yield pa.table([table["identity"], pa.array(np.full(n, _CURRENT, np.int8)), pa.array(np.full(n, -1)),
                        table["row"], pa.nulls(n, pa.string()), pa.nulls(n, pa.string())], schema=_RECORD_SCHEMA)
    per_shard = _read_manifest(out_dir)["number_sample_per_shard"]
    for index, name in enumerate(_passes(out_dir)):
        for shard, listed, parquet in _pass_shards(out_dir, name, ["identity"]):
            n = len(listed)
            status, error_message = np.full(n, None, object), np.full(n, None, object)
            if attempts and parquet is not None:
                attempted = pq.read_table(parquet, columns=["key", "status", "error_message"])
                position = _positions(attempted["key"], per_shard)
                status[position] = attempted["status"].to_numpy(zero_copy_only=False)
                error_message[position] = attempted["error_message"].to_numpy(zero_copy_only=False)
            yield pa.table([listed["identity"], pa.array(np.full(n, _LISTED, np.int8)), pa.array(np.full(n, index)),
                            pa.array(np.arange(shard * per_shard, shard * per_shard + n)),
                            pa.array(status, pa.string()), pa.array(error_message, pa.string())], schema=_RECORD_SCHEMA)


def _final_statuses(out_dir: Path) -> Iterator[tuple[int, str, str | None, bool]]:
    """(row, status, error_message, retried) for every row of the current list, in identity order."""
    retry_passes = _retry_indices(out_dir)
    for image in _images(out_dir, attempts=True):
        status, error_message, retried = image.final(retry_passes)
        for row in image.rows:
            yield row, status, error_message, retried


# --------------------------------------------------------------------------------------------
# Reading the lists and the passes back
# --------------------------------------------------------------------------------------------


def _list_tables(path: Path, columns: list[str], numbered: bool = False) -> Iterator[pa.Table]:
    """A URL list (a file, or a pass's folder of parts) a row group at a time, each row with its
    `row` number in the list if `numbered`."""
    start = 0
    for table in itertools.chain.from_iterable(row_groups(part, columns) for part in _parts(path)):
        if numbered:
            table = table.append_column("row", pa.array(np.arange(start, start + len(table))))
        start += len(table)
        yield table


def _parts(path: Path) -> list[Path]:
    return sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]


def _list_rows(path: Path) -> int:
    return sum(pq.ParquetFile(part).metadata.num_rows for part in _parts(path))


def _successes(out_dir: Path) -> Iterator[pa.Table]:
    """Every successful attempt, one finished shard at a time: url, identity, pass (its place in
    passes.json) and where the image is: tar, key, width, height."""
    per_shard = _read_manifest(out_dir)["number_sample_per_shard"]
    for index, name in enumerate(_passes(out_dir)):
        for _, listed, parquet in _pass_shards(out_dir, name, ["url", "identity"]):
            if parquet is None:
                continue
            attempted = pq.read_table(parquet, columns=["key", "status", "width", "height"])
            ok = attempted.filter(pc.equal(attempted["status"], "success"))
            position = _positions(ok["key"], per_shard)
            yield pa.table({
                "url": listed["url"].take(position),
                "identity": listed["identity"].take(position),
                "pass": pa.array([index] * len(ok), pa.int64()),
                "tar": pa.array([f"{name}/{parquet.stem}.tar"] * len(ok), pa.string()),
                "key": ok["key"],
                "width": ok["width"].cast(pa.int64()),
                "height": ok["height"].cast(pa.int64()),
            })


def _pass_shards(out_dir: Path, name: str, columns: list[str]) -> Iterator[tuple[int, pa.Table, Path | None]]:
    """(shard number, its rows of the pass's list (`columns`), img2dataset's parquet of the shard if
    it finished, else None) for every shard img2dataset makes of the list (number_sample_per_shard
    consecutive rows each), in order, a shard at a time."""
    per_shard = _read_manifest(out_dir)["number_sample_per_shard"]
    finished = dict(_finished_shards(out_dir / name))
    shard, pending = 0, None
    for table in _list_tables(_pass_list(out_dir, name), columns):
        pending = table if pending is None else pa.concat_tables([pending, table])
        while pending.num_rows >= per_shard:
            yield shard, pending.slice(0, per_shard), finished.get(shard)
            shard, pending = shard + 1, pending.slice(per_shard)
    if pending is not None and pending.num_rows:
        yield shard, pending, finished.get(shard)


def _positions(keys: pa.ChunkedArray, per_shard: int) -> np.ndarray:
    """The rows within its shard of each img2dataset key (see compute_key: shard * key_base + index)."""
    key_base = 10 ** math.ceil(math.log10(per_shard))
    return keys.to_numpy(zero_copy_only=False).astype("int64") % key_base


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
    rows = _list_rows(urls_path)
    if rows and not pass_dir.is_dir():
        return False
    expected = set(range(math.ceil(rows / manifest["number_sample_per_shard"])))
    return expected <= {shard for shard, _ in _finished_shards(pass_dir)}


def _passes(out_dir: Path) -> list[str]:
    return read_json(out_dir / PASSES) if (out_dir / PASSES).exists() else []


def _pass_list(out_dir: Path, name: str) -> Path:
    """A pass's URL list: a folder of parts, or one file in a download made before those."""
    old = out_dir / f"{name}.urls.parquet"
    return old if old.exists() else out_dir / f"{name}.urls"


def _retry_names(out_dir: Path) -> list[str]:
    return [name for name in _passes(out_dir) if name.startswith("retry-")]


def _retry_indices(out_dir: Path) -> set[int]:
    return {index for index, name in enumerate(_passes(out_dir)) if name.startswith("retry-")}


def _add_pass(out_dir: Path, name: str, rows: np.ndarray) -> None:
    """Register a pass fetching the current list's rows where `rows` (a mask) is true: its URL list
    first (written whole or not at all), then its name in passes.json (an interrupted registration
    leaves an unlisted list, which the next pass of that name replaces)."""
    per_shard = _read_manifest(out_dir)["number_sample_per_shard"]
    part_rows = max(1, PASS_LIST_PART_ROWS // per_shard) * per_shard
    chosen = (table.filter(rows[table["row"].to_numpy()]).drop_columns(["row"])
              for table in _list_tables(out_dir / URLS, LIST_SCHEMA.names, numbered=True))
    folder, tmp = out_dir / f"{name}.urls", out_dir / f".{name}.urls.tmp"
    for path in (folder, tmp, out_dir / f"{name}.urls.parquet"):
        _remove(path)
    tmp.mkdir()
    for number, part in enumerate(_regrouped(chosen, part_rows)):
        pq.write_table(part, tmp / f"part-{number:05d}.parquet", row_group_size=URL_LIST_ROW_GROUP_ROWS)
    os.replace(tmp, folder)
    write_json(out_dir / PASSES, [*_passes(out_dir), name])


def _drop_unused_passes(out_dir: Path, used: set[int]) -> None:
    """Delete the passes (by place in passes.json) not in `used`: none of their images is in the
    current URL list any more."""
    keep = []
    for index, name in enumerate(_passes(out_dir)):
        if index in used:
            keep.append(name)
            continue
        log.info("%s: pass %s holds no image of the current list; removing it", out_dir, name)
        shutil.rmtree(out_dir / name, ignore_errors=True)
        _remove(_pass_list(out_dir, name))
    if keep != _passes(out_dir):
        write_json(out_dir / PASSES, keep)


# --------------------------------------------------------------------------------------------
# Writing the URL list
# --------------------------------------------------------------------------------------------


def _write_url_list(chunks: Iterable[pd.DataFrame], path: Path) -> int:
    """Check each chunk of a URL list, add the identity column and write the list to `path` in row
    groups of URL_LIST_ROW_GROUP_ROWS, whole or not at all (a bad row at the end of a list leaves the
    list before it in place); returns the number of rows."""
    rows = 0

    def tables() -> Iterator[pa.Table]:
        nonlocal rows
        for chunk in chunks:
            urls = _url_table(chunk, first_row=rows)
            urls["identity"] = _identities(urls)
            rows += len(urls)
            yield pa.Table.from_pandas(urls, schema=LIST_SCHEMA, preserve_index=False)

    def write(f) -> None:
        with pq.ParquetWriter(f, LIST_SCHEMA) as writer:
            for group in _regrouped(tables(), URL_LIST_ROW_GROUP_ROWS):
                writer.write_table(group, row_group_size=URL_LIST_ROW_GROUP_ROWS)

    atomic_write(path, write)
    return rows


def _regrouped(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The rows of `tables` as tables of `rows` rows each (the last may have fewer; at least one
    table, empty if there are no rows), holding at most about `rows` rows besides the one read."""
    pending, yielded = LIST_SCHEMA.empty_table(), False
    for table in tables:
        pending = pa.concat_tables([pending, table])
        while pending.num_rows >= rows:
            yield pending.slice(0, rows).combine_chunks()
            pending, yielded = pending.slice(rows), True
    if pending.num_rows or not yielded:
        yield pending.combine_chunks()


def _url_table(urls_df: pd.DataFrame, first_row: int = 0) -> pd.DataFrame:
    """A chunk of a URL list checked (`first_row`: its first row's number in the whole list, for the
    errors), its columns as strings."""
    missing = [c for c in URL_COLUMNS if c not in urls_df.columns]
    if missing:
        raise ValueError(f"URL list lacks columns {missing}; expected {URL_COLUMNS}")
    urls = urls_df[URL_COLUMNS].reset_index(drop=True)
    for column in URL_COLUMNS:
        bad = urls.index[urls[column].isna()]
        if len(bad):
            raise ValueError(f"URL list row {first_row + bad[0]}: {column} is missing")
    urls = urls.astype(str)
    # Not urls["url"].str.strip(): pandas 2.3's .str accessor leaves a reference cycle holding the
    # column until the cyclic GC runs, ~20 MB per 32,768 rows, 0.6 GB at a million before it does.
    empty = next((row for row, url in enumerate(urls["url"]) if not url.strip()), None)
    if empty is not None:
        raise ValueError(f"URL list row {first_row + empty}: url is empty")
    return urls


def _identities(urls: pd.DataFrame) -> pd.Series:
    """What each row's image is: its URL, and for a local file also its size and a hash of its bytes,
    so that a changed file (a fixed image) is fetched again, and a file written again with the same
    bytes is not (a modification time would make `dvc repro -f`, which regenerates the demo's images,
    fetch every one a second time, and the shards and every number after them would differ)."""

    def stamp(url: str) -> str:
        if not url.startswith("file:"):
            return ""
        try:
            with open(url2pathname(urlparse(url).path), "rb") as f:
                digest = hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
                return f"{f.tell()}:{digest}"
        except OSError:
            return "missing"

    return urls["url"] + "\t" + urls["url"].map(stamp)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


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
        _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _counts(counter: Counter) -> dict[str, int]:
    """Most frequent first, ties by name."""
    return {str(k): int(v) for k, v in sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))}
