"""Every dataset's images go through img2dataset, into webdataset tars, with failures recorded.

Layout of one dataset's `out_dir`:

    download.json             what the outputs were made from: dataset, a digest of the URL list (and
                              of the local files it points to), the output options; when any of
                              them changes, the old outputs are removed and the download starts over
    urls.parquet              the URL list (url, caption, captions, image_id, split), one row per image
    main/                     img2dataset's output for urls.parquet:
        00000.tar               webdataset samples <key>.jpg, <key>.txt, <key>.json (successes only)
        00000.parquet           one row per input row: key, status, error_message, width, height, ...
        00000_stats.json        written last: img2dataset treats a shard with this file as done
    retry-01.urls.parquet     the rows still failed after the passes before, plus their `row` in urls.parquet
    retry-01/                 img2dataset's output for them, same layout as main/
    retry-02.urls.parquet, retry-02/, ...

A row's final status is success if any pass downloaded it, else the status of its last attempt.
A row of a shard that img2dataset never finished counts as failed with status `not_downloaded`.

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
import hashlib
import importlib.util
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
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd

from pipeline.checks import UserError
from pipeline.io import atomic_write, read_json, write_json

log = logging.getLogger(__name__)

URL_COLUMNS = ["url", "caption", "captions", "image_id", "split"]
ADDITIONAL_COLUMNS = ["image_id", "split", "captions"]
SAMPLE_COLUMNS = ["tar", "key", "url", "caption", "captions", "image_id", "split", "width", "height"]
MANIFEST = "download.json"
URLS = "urls.parquet"
REFUSED = "refused.json"  # rows the source refused to fetch, by reason
MAIN = "main"
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
    """Download `urls_df` (columns url, caption, captions, image_id, split) into `out_dir` with
    img2dataset, then re-download what failed, `cfg.retry_failed_passes` times (`cfg` is a
    `DownloadConfig`). Rerunning with the same inputs resumes: finished shards and passes are kept.
    Returns `download_report(out_dir)`."""
    out_dir = Path(out_dir)
    urls = _url_table(urls_df)
    manifest = {
        "dataset": dataset,
        "rows": len(urls),
        "inputs_sha256": _digest(urls),
        **{name: getattr(cfg, name) for name in OUTPUT_OPTIONS},
    }
    if _read_manifest(out_dir) != manifest:
        _clear(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_parquet(urls, out_dir / URLS)
        write_json(out_dir / MANIFEST, manifest)
    # Rows the source refused (an image outside its dataset's folder): counted, never fetched.
    write_json(out_dir / REFUSED, dict(sorted(urls_df.attrs.get("refused", {}).items())))
    _run_pass(out_dir / URLS, out_dir / MAIN, cfg)
    if not _last_pass_complete(out_dir):
        retry_failed(out_dir, cfg)  # finish an interrupted retry pass first
    for _ in range(cfg.retry_failed_passes - len(_retry_names(out_dir))):
        if retry_failed(out_dir, cfg) is None:
            break  # nothing failed any more
    return download_report(out_dir)


def retry_failed(out_dir: str | Path, cfg: Any) -> dict | None:
    """One retry pass: re-download only the rows whose final status is still failed, into the next
    `retry-NN/` (or finish an interrupted last pass). Returns the report, or None when no row failed."""
    out_dir = Path(out_dir)
    manifest = _checked_manifest(out_dir, cfg)
    names = _retry_names(out_dir)
    if names and not _pass_complete(out_dir / f"{names[-1]}.urls.parquet", out_dir / names[-1], manifest):
        name = names[-1]  # interrupted: resume it rather than start another
    else:
        failed = final_status(out_dir).query("status != 'success'")["row"].to_numpy()
        if len(failed) == 0:
            log.info("%s: no failed rows to retry", out_dir)
            return None
        name = f"retry-{len(names) + 1:02d}"
        urls = pd.read_parquet(out_dir / URLS).iloc[failed].copy()
        urls["row"] = failed
        _write_parquet(urls, out_dir / f"{name}.urls.parquet")
        log.info("%s: retrying %d failed rows into %s", out_dir, len(urls), name)
    _run_pass(out_dir / f"{name}.urls.parquet", out_dir / name, cfg)
    return download_report(out_dir)


def download_report(out_dir: str | Path) -> dict:
    """Counts of the final status of every input row, across the main pass and all retry passes."""
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
    """One row per downloaded image (main pass, then retries), deduplicated by URL: where it is
    (`tar` relative to out_dir, img2dataset's `key`) and what it is (url, captions, size)."""
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise DownloadError(f"{out_dir}: no download here ({MANIFEST} missing)")
    frames = []
    for name in [MAIN, *_retry_names(out_dir)]:
        for shard, parquet in _finished_shards(out_dir / name):
            df = pd.read_parquet(parquet, columns=[c for c in SAMPLE_COLUMNS if c != "tar"] + ["status"])
            df = df[df["status"] == "success"].drop(columns="status")
            df.insert(0, "tar", f"{name}/{parquet.stem}.tar")
            frames.append(df)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=str) for c in SAMPLE_COLUMNS})
    samples = pd.concat(frames, ignore_index=True).drop_duplicates("url", keep="first")
    samples[["width", "height"]] = samples[["width", "height"]].astype("int64")
    return samples.reset_index(drop=True)[SAMPLE_COLUMNS]


def final_status(out_dir: str | Path) -> pd.DataFrame:
    """Per row of urls.parquet: `row`, `status`, `error_message` (of its last attempt unless one
    succeeded) and `retried` (whether a retry pass attempted it)."""
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir) or {}
    n_rows = len(pd.read_parquet(out_dir / URLS, columns=["url"])) if (out_dir / URLS).exists() else 0
    attempts = _attempts(out_dir, manifest)
    final = pd.DataFrame({"row": range(n_rows)})
    final["status"] = NOT_DOWNLOADED
    final["error_message"] = "shard not finished by img2dataset"
    final["retried"] = False
    if len(attempts):
        attempts = attempts.sort_values(["row", "pass"], kind="stable")
        attempts["ok"] = attempts["status"] == "success"
        last = attempts.drop_duplicates("row", keep="last").set_index("row")
        ok = attempts.groupby("row")["ok"].any()
        last.loc[ok, "status"] = "success"
        last.loc[ok, "error_message"] = None
        final.loc[last.index, ["status", "error_message"]] = last[["status", "error_message"]].to_numpy()
        retried = attempts.loc[attempts["pass"] > 0, "row"].unique()
        final.loc[retried, "retried"] = True
    return final


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


def _attempts(out_dir: Path, manifest: dict) -> pd.DataFrame:
    """Every recorded attempt: row (of urls.parquet), pass (0 = main), status, error_message."""
    frames = []
    per_shard = manifest.get("number_sample_per_shard", 1)
    key_base = 10 ** math.ceil(math.log10(per_shard))  # img2dataset's compute_key
    for pass_index, name in enumerate([MAIN, *_retry_names(out_dir)]):
        row_of = None if pass_index == 0 else pd.read_parquet(out_dir / f"{name}.urls.parquet")["row"].to_numpy()
        for shard, parquet in _finished_shards(out_dir / name):
            df = pd.read_parquet(parquet, columns=["key", "status", "error_message"])
            position = shard * per_shard + df["key"].astype("int64") % key_base
            df["row"] = position.to_numpy() if row_of is None else row_of[position.to_numpy()]
            df["pass"] = pass_index
            frames.append(df.drop(columns="key"))
    if not frames:
        return pd.DataFrame(columns=["status", "error_message", "row", "pass"])
    return pd.concat(frames, ignore_index=True)


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
    import pyarrow.parquet as pq

    if manifest is None or not urls_path.exists():
        return False
    rows = pq.ParquetFile(urls_path).metadata.num_rows
    if rows and not pass_dir.is_dir():
        return False
    expected = set(range(math.ceil(rows / manifest["number_sample_per_shard"])))
    return expected <= {shard for shard, _ in _finished_shards(pass_dir)}


def _last_pass_complete(out_dir: Path) -> bool:
    names = _retry_names(out_dir)
    if not names:
        return True
    return _pass_complete(out_dir / f"{names[-1]}.urls.parquet", out_dir / names[-1], _read_manifest(out_dir))


def _retry_names(out_dir: Path) -> list[str]:
    return sorted(p.name.removesuffix(".urls.parquet") for p in out_dir.glob("retry-[0-9][0-9]*.urls.parquet"))


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
    atomic_write(path, lambda f: df.to_parquet(f, index=False))


def _digest(urls: pd.DataFrame) -> str:
    """A digest of the URL list and, for file:// URLs, of each file's size and modification time:
    a local image that changed (a regenerated demo, a fixed file) makes the old outputs stale even
    where the URL list did not change."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(urls, index=True).to_numpy().tobytes())
    for url in urls["url"]:
        if url.startswith("file:"):
            try:
                st = os.stat(url2pathname(urlparse(url).path))
                digest.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                digest.update(b"missing;")
    return digest.hexdigest()


def _read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _checked_manifest(out_dir: Path, cfg: Any) -> dict:
    manifest = _read_manifest(out_dir)
    if manifest is None or not (out_dir / URLS).exists():
        raise DownloadError(f"{out_dir}: nothing to retry: no download here yet (run the download first)")
    changed = [name for name in OUTPUT_OPTIONS if manifest.get(name) != getattr(cfg, name)]
    if changed:
        raise DownloadError(
            f"{out_dir}: data.download options {changed} differ from those of the download here; "
            "rerun the whole download instead of retrying"
        )
    return manifest


def _clear(out_dir: Path) -> None:
    """Remove what a download with other inputs or options left (only the files this module writes)."""
    if not out_dir.exists():
        return
    stale = [out_dir / MAIN, out_dir / URLS, out_dir / MANIFEST, *out_dir.glob("retry-[0-9][0-9]*")]
    if any(p.exists() for p in stale):
        log.warning("%s: inputs or output options changed; removing the previous download", out_dir)
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in Counter(values).most_common()}
