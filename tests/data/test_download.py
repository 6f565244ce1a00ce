"""img2dataset on local file:// URLs: failures recorded by kind, retries, resume, tar contents."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import shutil
import tempfile
import tarfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import DownloadConfig
from pipeline.data import download as dl
from pipeline.data import sorting

pytestmark = pytest.mark.slow

MISSING = "<urlopen error [Errno 2] No such file or directory: <path>>"
UNDECODABLE = "Image decoding error"

CFG = DownloadConfig(
    image_size=32,
    resize_mode="keep_ratio",
    resize_only_if_bigger=True,
    encode_format="jpg",
    encode_quality=90,
    processes_count=1,
    thread_count=4,
    number_sample_per_shard=4,
    timeout=5,
    retries=0,
    distributor="multiprocessing",
    spark_driver_memory="1g",
    retry_failed_passes=0,
)


def jpeg_bytes(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_urls(root: Path, good: int = 5) -> pd.DataFrame:
    """`good` JPEGs, then a missing file, a text file named .jpg and a JPEG cut to 150 bytes."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(good):
        (root / f"good{i}.jpg").write_bytes(jpeg_bytes(40 + 7 * i, 30 + 5 * i, (40 * i % 256, 90, 160)))
        names.append(f"good{i}.jpg")
    (root / "text.jpg").write_text("this is not an image\n")
    (root / "truncated.jpg").write_bytes(jpeg_bytes(64, 64, (200, 10, 10))[:150])
    names += ["missing.jpg", "text.jpg", "truncated.jpg"]
    rows = [
        {
            "url": (root.resolve() / name).as_uri(),
            "caption": f"caption of {name}",
            "captions": json.dumps([f"caption of {name}", "another"]),
            "image_id": name.removesuffix(".jpg"),
            "split": "train" if i % 2 else "val",
        }
        for i, name in enumerate(names)
    ]
    return pd.DataFrame(rows)


def downloaded(out: Path) -> pd.DataFrame:
    """The split stage's stream (samples_by_url) as a frame."""
    return pd.DataFrame(list(dl.samples_by_url(out, Path(tempfile.mkdtemp()))), columns=dl.SAMPLE_COLUMNS)


def expected_samples(out: Path) -> list[dict]:
    """What samples_by_url must give, read from the download folder in pandas, independently of the
    module's streaming: per URL, the first row of the list whose image some pass got, with the first
    pass that got it; in URL order."""
    per_shard = json.loads((out / "download.json").read_text())["number_sample_per_shard"]
    key_base = 10 ** math.ceil(math.log10(per_shard))
    got = []
    for index, name in enumerate(json.loads((out / "passes.json").read_text())):
        listed = pd.read_parquet(out / f"{name}.urls")
        for parquet in sorted((out / name).glob("*.parquet")):
            if not (out / name / f"{parquet.stem}_stats.json").exists():
                continue
            shard = pd.read_parquet(parquet).query("status == 'success'")
            rows = int(parquet.stem) * per_shard + shard["key"].astype("int64").to_numpy() % key_base
            got.append(pd.DataFrame({"identity": listed["identity"].to_numpy()[rows], "pass": index,
                                     "tar": f"{name}/{parquet.stem}.tar", "key": shard["key"].to_numpy(),
                                     "width": shard["width"].astype("int64").to_numpy(),
                                     "height": shard["height"].astype("int64").to_numpy()}))
    first = pd.concat(got).sort_values("pass", kind="stable").drop_duplicates("identity")
    urls = pd.read_parquet(out / "urls.parquet")
    found = urls.merge(first, on="identity").drop_duplicates("url").sort_values("url", kind="stable")
    return found[dl.SAMPLE_COLUMNS].to_dict("records")


def shard_files(pass_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(pass_dir.iterdir()) if p.is_file()}


@pytest.mark.parametrize("resize_mode", ["keep_ratio", "no"])
def test_download_records_each_failure_kind(tmp_path, resize_mode):
    urls = make_urls(tmp_path / "images")
    urls.attrs["refused"] = {"local file outside the dataset folder": 2}  # what the source reader refused
    out = tmp_path / "out"
    report = dl.download("roco", urls, out, replace(CFG, resize_mode=resize_mode))
    assert report == {
        "dataset": "roco",
        "rows": 8,
        "success": 5,
        "failed": 3,
        "success_rate": 0.625,
        "recovered_by_retry": 0,
        "retry_passes": 0,
        "failed_by_status": {"failed_to_resize": 2, "failed_to_download": 1},
        "failed_by_error": {UNDECODABLE: 2, MISSING: 1},
        "refused": 2,
        "refused_by_reason": {"local file outside the dataset folder": 2},
    }
    json.dumps(report)  # a DVC metrics file
    final = dl.final_status(out).set_index("row")["status"]
    assert final[5] == "failed_to_download" and final[6] == final[7] == "failed_to_resize"
    # the layout: the URL list, img2dataset's own folder, nothing else of img2dataset's
    assert sorted(p.name for p in out.iterdir()) == ["download.json", "main", "main.urls", "passes.json",
                                                     "refused.json", "urls.parquet"]
    ends = (".tar", ".parquet", "_stats.json")
    assert set(shard_files(out / "main")) == {f"0000{i}{end}" for i in (0, 1) for end in ends}


def test_samples_point_to_tar_members(tmp_path):
    urls = make_urls(tmp_path / "images")
    urls = pd.concat([urls, urls.iloc[[1]]], ignore_index=True)  # the same URL twice
    out = tmp_path / "out"
    report = dl.download("cc12m", urls, out, CFG)
    assert (report["rows"], report["success"]) == (9, 6)
    samples = downloaded(out)
    assert list(samples.columns) == dl.SAMPLE_COLUMNS
    assert len(samples) == 5 and samples["url"].is_unique
    assert set(samples["image_id"]) == {f"good{i}" for i in range(5)}
    for sample in samples.itertuples():
        with tarfile.open(out / sample.tar) as tar:
            image = Image.open(io.BytesIO(tar.extractfile(f"{sample.key}.jpg").read()))
            assert image.size == (sample.width, sample.height)
            assert min(image.size) <= CFG.image_size  # resized (keep_ratio, only if bigger)
            meta = json.loads(tar.extractfile(f"{sample.key}.json").read())
            assert tar.extractfile(f"{sample.key}.txt").read().decode() == sample.caption
        assert meta["url"] == sample.url and meta["image_id"] == sample.image_id
        assert meta["captions"] == sample.captions and meta["split"] == sample.split


def test_samples_by_url_are_the_downloaded_samples_sorted_by_url(tmp_path, monkeypatch):
    """The split stage's stream: the first row of each URL whose image a pass got, with the first
    pass that got it, in URL order, across passes, shards, parts, row groups and merged runs."""
    monkeypatch.setattr(dl, "URL_LIST_ROW_GROUP_ROWS", 3)  # URL lists of several row groups
    monkeypatch.setattr(dl, "PASS_LIST_PART_ROWS", 9)  # pass lists of several parts of 2 shards
    monkeypatch.setattr(sorting, "RUN_ROWS", 3)
    monkeypatch.setattr(sorting, "MERGE_BATCH_ROWS", 2)
    monkeypatch.setattr(sorting, "MAX_FAN_IN", 2)
    images = tmp_path / "images"
    urls = make_urls(images)
    again = urls.iloc[[3, 1, 6]].assign(caption="a later row of the same URL")
    out = tmp_path / "out"
    dl.download("cc12m", pd.concat([again, urls, again], ignore_index=True), out, CFG)
    (images / "missing.jpg").write_bytes(jpeg_bytes(50, 40, (0, 128, 0)))
    dl.retry_failed(out, CFG)  # retry-01 gets missing.jpg
    more = make_urls(tmp_path / "more", good=3)
    dl.download("cc12m", pd.concat([again, urls, more, again], ignore_index=True), out, CFG)
    assert dl._passes(out) == ["main", "retry-01", "add-01"]

    expected = expected_samples(out)
    assert list(dl.samples_by_url(out, tmp_path / "scratch")) == expected
    assert len(expected) == 9 and len(list((tmp_path / "scratch" / "urls").glob("merged-1-*"))) > 1
    assert pq.ParquetFile(out / "urls.parquet").metadata.num_row_groups == 7  # 20 rows, 3 a group


def test_retry_recovers_rows_that_failed(tmp_path):
    images = tmp_path / "images"
    urls = make_urls(images)
    out = tmp_path / "out"
    assert dl.download("mscoco", urls, out, CFG)["success"] == 5
    (images / "missing.jpg").write_bytes(jpeg_bytes(50, 40, (0, 128, 0)))  # now it exists
    report = dl.retry_failed(out, CFG)
    assert report["retry_passes"] == 1 and report["recovered_by_retry"] == 1
    assert (report["rows"], report["success"], report["failed"]) == (8, 6, 2)
    assert report["failed_by_status"] == {"failed_to_resize": 2}
    # the retry pass downloaded only the three failed rows
    assert len(pd.read_parquet(out / "retry-01.urls")) == 3
    samples = downloaded(out)
    assert len(samples) == 6
    recovered = samples[samples["image_id"] == "missing"].iloc[0]
    assert recovered["tar"] == "retry-01/00000.tar"
    with tarfile.open(out / recovered["tar"]) as tar:
        assert f"{recovered['key']}.jpg" in tar.getnames()
    # a second pass retries only what is still failed
    report = dl.retry_failed(out, CFG)
    assert report["retry_passes"] == 2 and report["success"] == 6
    assert pd.read_parquet(out / "retry-02.urls")["image_id"].tolist() == ["text", "truncated"]
    # a local file changed since the main pass (missing.jpg now exists): only that image is fetched again
    report = dl.download("mscoco", urls, out, CFG)
    assert (report["success"], report["failed"], report["retry_passes"]) == (6, 2, 2)
    assert pd.read_parquet(out / "add-01.urls")["image_id"].tolist() == ["missing"]
    assert (out / "retry-01").exists()


def test_download_runs_the_configured_retry_passes(tmp_path, monkeypatch):
    urls = make_urls(tmp_path / "images")
    out = tmp_path / "out"
    cfg = replace(CFG, retry_failed_passes=2)
    report = dl.download("flickr30k", urls, out, cfg)
    assert report["retry_passes"] == 2 and report["failed"] == 3
    assert report["failed_by_status"] == {"failed_to_resize": 2, "failed_to_download": 1}
    assert [len(pd.read_parquet(out / f"retry-0{i}.urls")) for i in (1, 2)] == [3, 3]
    # rerunning with the same inputs keeps every pass as it is, without starting img2dataset
    before = {d: shard_files(out / d) for d in ("main", "retry-01", "retry-02")}
    monkeypatch.setattr(dl, "_img2dataset", None)
    assert dl.download("flickr30k", urls, out, cfg) == report
    assert before == {d: shard_files(out / d) for d in ("main", "retry-01", "retry-02")}


def test_a_local_file_written_again_with_the_same_bytes_is_not_fetched_again(tmp_path, monkeypatch):
    """`dvc repro -f` regenerates the demo's images: the same bytes with new modification times. They
    are the same images (identified by size and content), so nothing is fetched again and the download
    stays byte for byte what it was; a file whose bytes changed is fetched again, alone."""
    images = tmp_path / "images"
    urls = make_urls(images)
    out = tmp_path / "out"
    report = dl.download("roco", urls, out, CFG)
    before = shard_files(out / "main")
    for path in images.iterdir():
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with monkeypatch.context() as m:
        m.setattr(dl, "_img2dataset", None)  # nothing to fetch: img2dataset must not start
        assert dl.download("roco", urls, out, CFG) == report
    assert shard_files(out / "main") == before and not (out / "add-01.urls").exists()
    (images / "good2.jpg").write_bytes(jpeg_bytes(50, 40, (1, 2, 3)))
    dl.download("roco", urls, out, CFG)
    assert pd.read_parquet(out / "add-01.urls")["image_id"].tolist() == ["good2"]


def test_nothing_to_retry(tmp_path):
    urls = make_urls(tmp_path / "images").iloc[:3]
    assert dl.download("roco", urls, tmp_path / "out", replace(CFG, retry_failed_passes=3))["retry_passes"] == 0
    assert dl.retry_failed(tmp_path / "out", CFG) is None
    with pytest.raises(dl.DownloadError, match="no download here yet"):
        dl.retry_failed(tmp_path / "elsewhere", CFG)
    with pytest.raises(dl.DownloadError, match="image_size"):
        dl.retry_failed(tmp_path / "out", replace(CFG, image_size=64))
    if importlib.util.find_spec("ray") is None:
        with pytest.raises(dl.DownloadError, match="needs the package ray"):
            dl.download("roco", urls, tmp_path / "out-ray", replace(CFG, distributor="ray"))


def test_incremental_resume_redownloads_only_missing_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "URL_LIST_ROW_GROUP_ROWS", 3)  # row groups that do not fall on shard edges
    monkeypatch.setattr(dl, "PASS_LIST_PART_ROWS", 9)  # parts of 8 rows (2 shards) that img2dataset reads in turn
    urls = make_urls(tmp_path / "images", good=7)  # 10 rows, 4 per shard: shards 0, 1, 2
    out = tmp_path / "out"
    first = dl.download("cc12m", urls, out, CFG)
    assert [len(pd.read_parquet(p)) for p in sorted((out / "main.urls").iterdir())] == [8, 2]
    assert first["success"] == 7 and len(downloaded(out)) == 7  # every key maps back to its row
    main = out / "main"
    before = shard_files(main)
    assert len(before) == 9
    # an interrupted run: shard 1 never finished; shard 2 lost its tar after finishing
    for name in ("00001.tar", "00001.parquet", "00001_stats.json", "00002.tar"):
        (main / name).unlink()
    assert dl.download("cc12m", urls, out, CFG) == first
    after = shard_files(main)
    assert sorted(after) == sorted(before)
    unchanged = {name for name in after if after[name] == before[name]}
    assert unchanged == {"00000.tar", "00000.parquet", "00000_stats.json"}
    assert len(downloaded(out)) == 7

    # all shards done: img2dataset is not even started
    def fail(*args, **kwargs):
        raise AssertionError("img2dataset should not run")

    monkeypatch.setattr(dl, "_img2dataset", fail)
    assert dl.download("cc12m", urls, out, CFG) == first


def test_fewer_rows_fetch_nothing_and_other_options_start_over(tmp_path, monkeypatch):
    urls = make_urls(tmp_path / "images")
    out = tmp_path / "out"
    dl.download("roco", urls, out, CFG)
    main = shard_files(out / "main")
    with monkeypatch.context() as mp:
        mp.setattr(dl, "_img2dataset", None)  # nothing to fetch: img2dataset must not start
        report = dl.download("roco", urls.iloc[:2], out, CFG)
    assert (report["rows"], report["success"]) == (2, 2) and shard_files(out / "main") == main
    assert len(downloaded(out)) == 2
    report = dl.download("roco", urls.iloc[:2], out, replace(CFG, image_size=16))  # other bytes: refetched
    assert dl._passes(out) == ["main"] and len(pd.read_parquet(out / "main.urls")) == 2
    assert downloaded(out)[["width", "height"]].min().min() <= 16


def test_a_list_in_chunks_is_the_list_whole(tmp_path, monkeypatch):
    """A source that streams (CC12M's reader) hands the list over in chunks: the same download as the
    frame at once; a bad row in a later chunk is named by its row in the whole list, and leaves the
    URL list of the download before it in place (nothing half written)."""
    monkeypatch.setattr(dl, "URL_LIST_ROW_GROUP_ROWS", 3)
    urls = make_urls(tmp_path / "images")
    whole = dl.download("roco", urls, tmp_path / "whole", CFG, refused={"r": 1})
    chunks = (urls.iloc[start:start + 5] for start in range(0, len(urls), 5))
    assert dl.download("roco", chunks, tmp_path / "chunks", CFG, refused={"r": 1}) == whole
    for name in ("urls.parquet", "main.urls/part-00000.parquet"):
        assert pq.read_table(tmp_path / "chunks" / name).equals(pq.read_table(tmp_path / "whole" / name))
    assert pq.ParquetFile(tmp_path / "chunks" / "urls.parquet").metadata.num_row_groups == 3  # 8 rows, 3 a group

    listed = (tmp_path / "whole" / "urls.parquet").read_bytes()
    bad = urls.copy()
    bad.loc[6, "caption"] = None
    with monkeypatch.context() as mp:
        mp.setattr(dl, "_img2dataset", None)  # it must fail before any fetch
        with pytest.raises(ValueError, match="row 6: caption is missing"):
            dl.download("roco", (bad.iloc[:5], bad.iloc[5:]), tmp_path / "whole", CFG)
    bad.loc[6, "caption"], bad.loc[7, "url"] = "a caption", "  "
    with pytest.raises(ValueError, match="row 7: url is empty"):
        dl.download("roco", (bad.iloc[:5], bad.iloc[5:]), tmp_path / "whole", CFG)
    assert (tmp_path / "whole" / "urls.parquet").read_bytes() == listed
    assert dl.download_report(tmp_path / "whole") == whole


def test_a_download_made_with_single_file_pass_lists_is_read_as_before(tmp_path, monkeypatch):
    """Downloads made before pass lists were folders (`main.urls.parquet`) keep every image: nothing
    is fetched again, the report and the samples are the same, and a new pass is a folder."""
    images = tmp_path / "images"
    urls = make_urls(images)
    out = tmp_path / "out"
    report = dl.download("roco", urls, out, CFG)
    samples = downloaded(out)
    pd.read_parquet(out / "main.urls").to_parquet(out / "main.urls.parquet", index=False)  # the old layout
    shutil.rmtree(out / "main.urls")
    with monkeypatch.context() as mp:
        mp.setattr(dl, "_img2dataset", None)
        assert dl.download("roco", urls, out, CFG) == report
    assert downloaded(out).equals(samples)
    (images / "missing.jpg").write_bytes(jpeg_bytes(50, 40, (0, 128, 0)))
    assert dl.retry_failed(out, CFG)["success"] == 6
    assert (out / "retry-01.urls").is_dir() and (out / "main.urls.parquet").is_file()
    assert dl.download("roco", urls.iloc[:1], out, CFG)["success"] == 1  # retry-01 no longer used: removed
    assert dl._passes(out) == ["main"] and not (out / "retry-01.urls").exists()
    assert len(downloaded(out)) == 1


def test_empty_and_invalid_url_lists(tmp_path):
    empty = make_urls(tmp_path / "images").iloc[:0]
    report = dl.download("roco", empty, tmp_path / "out", replace(CFG, retry_failed_passes=1))
    assert (report["rows"], report["success"], report["success_rate"], report["retry_passes"]) == (0, 0, 0.0, 0)
    assert downloaded(tmp_path / "out").empty
    bad = make_urls(tmp_path / "images")
    bad.loc[2, "url"] = None
    with pytest.raises(ValueError, match="row 2: url is missing"):
        dl.download("roco", bad, tmp_path / "out2", CFG)
    with pytest.raises(ValueError, match="lacks columns"):
        dl.download("roco", bad.drop(columns="captions"), tmp_path / "out2", CFG)
    (tmp_path / "out2" / dl.URLS).unlink(missing_ok=True)  # stopped between the manifest and the list
    with pytest.raises(dl.DownloadError, match="no URL list"):
        dl.download_report(tmp_path / "out2")


def test_normalise_error():
    assert dl.normalise_error("<urlopen error [Errno 2] No such file or directory: '/a/b c.jpg'>") == MISSING
    assert dl.normalise_error("HTTP Error 404: Not Found") == "HTTP Error 404: Not Found"
    assert dl.normalise_error("bad thing at https://x.example/a?b=1 now") == "bad thing at <url> now"
    assert dl.normalise_error(None) == "unknown"


@pytest.fixture
def image_server(tmp_path):
    """A real HTTP image server on 127.0.0.1 that counts the requests for each path."""
    import http.server
    import threading
    from collections import Counter

    root = tmp_path / "served"
    root.mkdir()
    hits: Counter = Counter()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            hits[self.path] += 1
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_downloads_are_incremental_per_row_counted_at_the_server(tmp_path, image_server):
    """N rows, then N + k (only the k are fetched), then a caption edit (nothing is fetched and the new
    caption is what the download offers), then fewer rows (nothing fetched, the removed rows gone)."""
    root, base, hits = image_server
    for i in range(10):
        (root / f"{i}.jpg").write_bytes(jpeg_bytes(40 + i, 30, (20 * i, 100, 50)))

    def rows(n: int, edited: dict | None = None) -> pd.DataFrame:
        captions = {i: f"caption {i}" for i in range(n)} | (edited or {})
        return pd.DataFrame([{"url": f"{base}/{i}.jpg", "caption": captions[i], "captions": json.dumps([captions[i]]),
                              "image_id": str(i), "split": ""} for i in range(n)])

    out = tmp_path / "out"
    assert dl.download("cc12m", rows(6), out, CFG)["success"] == 6
    assert sum(hits.values()) == 6
    hits.clear()
    report = dl.download("cc12m", rows(10), out, CFG)
    assert (report["rows"], report["success"]) == (10, 10)
    assert sorted(hits) == ["/6.jpg", "/7.jpg", "/8.jpg", "/9.jpg"] and sum(hits.values()) == 4
    hits.clear()
    dl.download("cc12m", rows(10, {3: "an edited caption"}), out, CFG)
    assert sum(hits.values()) == 0
    samples = downloaded(out).set_index("image_id")
    assert samples.loc["3", "caption"] == "an edited caption"
    assert json.loads(samples.loc["3", "captions"]) == ["an edited caption"]
    report = dl.download("cc12m", rows(4), out, CFG)
    assert sum(hits.values()) == 0 and (report["rows"], report["success"]) == (4, 4)
    assert sorted(downloaded(out)["image_id"]) == ["0", "1", "2", "3"]
    assert dl._passes(out) == ["main"]  # add-01 held only removed rows: deleted


@pytest.mark.slow
def test_pyspark_downloads_the_same_samples_as_multiprocessing(tmp_path, image_server, monkeypatch):
    """distributor: pyspark runs img2dataset in Spark local mode, with this interpreter for Spark's
    Python workers even when the venv is not on PATH (they once started `python3` and failed with
    `No module named 'img2dataset'`): the same keys, captions and image bytes as multiprocessing."""
    import dataclasses
    import tarfile

    root, base, hits = image_server
    for i in range(6):
        (root / f"{i}.jpg").write_bytes(jpeg_bytes(40 + i, 30, (20 * i, 100, 50)))
    rows = pd.DataFrame([{"url": f"{base}/{i}.jpg", "caption": f"caption {i}", "captions": json.dumps([f"caption {i}"]),
                          "image_id": str(i), "split": ""} for i in range(6)] +
                        [{"url": f"{base}/missing.jpg", "caption": "gone", "captions": "[]", "image_id": "6", "split": ""}])

    def members(out: Path) -> dict[str, bytes]:
        found = {}
        for tar in sorted(out.glob("main/*.tar")):
            with tarfile.open(tar) as t:
                for m in t.getmembers():
                    if m.name.endswith((".jpg", ".txt")):
                        found[m.name] = t.extractfile(m).read()
        return found

    with_processes = dl.download("cc12m", rows, tmp_path / "mp", CFG)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no venv on PATH: Spark's default `python3` lacks img2dataset
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    monkeypatch.delenv("PYSPARK_DRIVER_PYTHON", raising=False)
    with_spark = dl.download("cc12m", rows, tmp_path / "spark", dataclasses.replace(CFG, distributor="pyspark",
                                                                                  processes_count=2))
    assert with_spark == with_processes and with_spark["success"] == 6 and with_spark["failed"] == 1
    spark_samples, mp_samples = downloaded(tmp_path / "spark"), downloaded(tmp_path / "mp")
    assert spark_samples.drop(columns="tar").equals(mp_samples.drop(columns="tar"))
    assert members(tmp_path / "spark") == members(tmp_path / "mp") and len(members(tmp_path / "mp")) == 12
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    assert session.conf.get("spark.driver.memory") == "1g"
    session.stop()


def test_the_cli_retries_the_failed_rows_and_rewrites_the_report(tmp_path):
    """`grr-coca download <dataset> --retry-failed`: one retry pass over the failed rows, then the
    report file rewritten from the streamed statuses."""
    import subprocess
    import sys

    from pipeline.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg = replace(load_config(root / "params.yaml").data.download, retry_failed_passes=0)  # what the CLI reads
    images, out, report_file = tmp_path / "images", tmp_path / "out", tmp_path / "report.json"
    assert dl.download("roco", make_urls(images), out, cfg)["failed"] == 3
    (images / "missing.jpg").write_bytes(jpeg_bytes(50, 40, (0, 128, 0)))
    result = subprocess.run([str(Path(sys.executable).parent / "grr-coca"), "download", "roco", "--retry-failed",
                             "--out", str(out), "--report", str(report_file)], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(report_file.read_text())
    assert (report["success"], report["failed"], report["retry_passes"], report["recovered_by_retry"]) == (6, 2, 1, 1)
    assert report == dl.download_report(out) and "roco: 6/8 downloaded" in result.stdout
