"""Each dataset's own release format, read into one uniform URL list.

Every reader returns a DataFrame with one row per image and these string columns:

    url       where img2dataset fetches the image (http(s) for CC12M and MSCOCO, file:// otherwise; a
              list's URL without a scheme is a path relative to its dataset's folder, made file://)
    caption   the image's first caption
    captions  a JSON list of all its captions (MSCOCO and Flickr30K have about five)
    image_id  the dataset's own id (CC12M has none: a hash of the URL)
    split     the release's own split name ("" for CC12M, which has none)

A file that is missing or malformed raises `SourceError` naming the file, the line or JSON path and
what is wrong; a missing file also says where the real dataset can be obtained.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from pipeline.checks import UserError

log = logging.getLogger(__name__)

COLUMNS = ["url", "caption", "captions", "image_id", "split"]
DATASETS = ("cc12m", "mscoco", "flickr30k", "roco")
COCO_FILES = {"train": "captions_train2017.json", "val": "captions_val2017.json"}
ROCO_SPLITS = ("train", "valid", "test")
ROCO_HEADER = ["ID", "Caption"]
CHUNK_ROWS = 32_768  # CC12M rows read at once: ~20 MB as Python strings

WHERE_TO_OBTAIN = {
    "cc12m": "download https://storage.googleapis.com/conceptual_12m/cc12m.tsv "
    "(see github.com/google-research-datasets/conceptual-12m)",
    "mscoco": "download and unzip http://images.cocodataset.org/annotations/annotations_trainval2017.zip "
    "(it holds annotations/captions_train2017.json and captions_val2017.json)",
    "flickr30k": "request the Flickr30K images with the form at https://shannon.cs.illinois.edu/DenotationGraph/ "
    "and take dataset_flickr30k.json (Karpathy splits) from "
    "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
    "mscoco_karpathy": "take dataset_coco.json from https://cs.stanford.edu/people/karpathy/deepimagesent/"
    "caption_datasets.zip and the images from http://images.cocodataset.org/zips/val2014.zip (its test split "
    "is in val2014/)",
    "flickr30k_karpathy": "request the Flickr30K images with the form at https://shannon.cs.illinois.edu/DenotationGraph/ "
    "and take dataset_flickr30k.json from https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
    "roco": "download ROCO v2 from https://zenodo.org/records/10821435 and unzip train/valid/test "
    "next to {train,valid,test}_captions.csv",
}


# The `data.sources` keys each dataset reads, and what they point to.
SOURCE_KEYS = {
    "cc12m": {"cc12m_tsv": "the URL/caption list cc12m.tsv"},
    "mscoco": {"mscoco_annotations": "the annotations folder (captions_{train,val}2017.json)"},
    "flickr30k": {
        "flickr30k_json": "the Karpathy split file dataset_flickr30k.json",
        "flickr30k_images": "the Flickr30K image folder (flickr30k-images)",
    },
    "roco": {"roco_root": "the ROCO v2 folder ({train,valid,test}_captions.csv and images)"},
}


class SourceError(UserError, ValueError):
    """A dataset file that is missing or not in the format its release uses."""


def url_id(url: str) -> str:
    """A stable id for an image known only by its URL (CC12M): the first 16 hex digits of SHA-1."""
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


def _frame(rows: list[tuple[str, str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS, dtype=str) if rows else pd.DataFrame(
        {c: pd.Series(dtype=str) for c in COLUMNS}
    )


def _require(path: Path, dataset: str, what: str, key: str | None = None) -> None:
    if path.exists():
        return
    named = f" (config key 'data.sources.{key}')" if key else ""
    raise SourceError(f"{dataset}: {what} not found at {path}{named}; to obtain it, {WHERE_TO_OBTAIN[dataset]}")


def _clean(text: str) -> str:
    return " ".join(text.split())  # COCO and ROCO captions carry stray newlines and trailing spaces


# --------------------------------------------------------------------------------------------
# CC12M: url<TAB>caption per line, no header
# --------------------------------------------------------------------------------------------


def _refusal(url: str, root: Path) -> str | None:
    """Why an image may not be fetched (None: it may): a dataset's images are web URLs (http, https) or
    local files inside the dataset's own folder `root`, never anywhere else the user can read (`..`,
    absolute paths and symlinks out are refused), so nothing outside a dataset reaches its shards."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme != "file":
        return f"scheme {parsed.scheme or '(none)'}: not http, https or file"
    local = Path(urllib.parse.unquote(parsed.path)).resolve()
    return None if local.is_relative_to(root.resolve()) else "local file outside the dataset folder"


def resolve_reference(url: str, root: Path) -> str:
    """A URL as img2dataset fetches it: a reference without a scheme (`images/000001.jpg`) is a file
    path relative to the dataset's folder `root` (so a list that names its images that way reads the
    same wherever its folder lives: the demo's do), made an absolute file:// URL; any other URL as is."""
    if urllib.parse.urlsplit(url).scheme:
        return url
    return (root.resolve() / urllib.parse.unquote(url)).as_uri()  # `..` stays, and _refusal refuses it


def _confined(rows: list[tuple], root: Path, dataset: str) -> tuple[list[tuple], dict[str, int]]:
    """The rows whose image may be fetched, and the count of the others by reason (never fetched)."""
    kept, refused = [], Counter()
    for row in rows:
        reason = _refusal(row[0], root)
        if reason is None:
            kept.append(row)
        else:
            refused[reason] += 1
            log.warning("%s: refused %s (%s)", dataset, row[0][:200], reason)
    return kept, dict(refused)


def read_cc12m_tsv(path: str | Path) -> pd.DataFrame:
    """Read `cc12m.tsv` whole (see cc12m_tsv_chunks; the download stage streams it instead)."""
    refused: Counter = Counter()
    df = pd.concat(list(cc12m_tsv_chunks(path, refused)), ignore_index=True)
    df.attrs["refused"] = dict(refused)
    return df


def cc12m_tsv_chunks(path: str | Path, refused: Counter, chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Read `cc12m.tsv` `chunk_rows` lines at a time (10.9M rows held whole as Python strings would
    take gigabytes), counting the refused rows into `refused` by reason. At least one frame, empty if
    no row is kept. Blank lines are skipped; any other line must be `url<TAB>caption` with a non-empty
    URL without spaces and a non-empty caption without further tabs. A URL without a scheme is a file
    path relative to the TSV's folder (see `resolve_reference`); its image_id is the hash of the URL
    as written, so it does not depend on where the folder lives."""
    path = Path(path)
    _require(path, "cc12m", "the URL/caption list cc12m.tsv")
    rows, kept = [], 0
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: a byte-order mark is not part of line 1
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            problem = None
            if len(fields) != 2:
                problem = (
                    "no tab: expected 'url<TAB>caption'"
                    if len(fields) == 1
                    else f"{len(fields) - 1} tabs: expected exactly one (a caption may not contain tabs)"
                )
            else:
                url, caption = fields[0].strip(), _clean(fields[1])
                if not url:
                    problem = "empty url"
                elif " " in url or ("://" not in url and urllib.parse.urlsplit(url).scheme):
                    problem = f"url {url[:80]!r} is not a URL"
                elif not caption:
                    problem = "empty caption"
            if problem:
                raise SourceError(f"{path}: line {lineno}: {problem}")
            rows.append((resolve_reference(url, path.parent), caption, json.dumps([caption], ensure_ascii=False),
                         url_id(url), ""))
            if len(rows) == chunk_rows:
                chunk = _confined_frame(rows, path.parent, refused)
                kept += len(chunk)
                yield chunk
                rows = []
    if rows or not kept:
        chunk = _confined_frame(rows, path.parent, refused)
        kept += len(chunk)
        yield chunk
    log.info("cc12m: %d rows from %s", kept, path)


def _confined_frame(rows: list[tuple], root: Path, refused: Counter) -> pd.DataFrame:
    rows, refused_here = _confined(rows, root, "cc12m")
    refused.update(refused_here)
    return _frame(rows)


# --------------------------------------------------------------------------------------------
# MSCOCO: captions_{train,val}2017.json
# --------------------------------------------------------------------------------------------


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: line {e.lineno} column {e.colno}: not valid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 text: {e}") from None


def _get(obj: Any, key: str, where: str, path: Path, kind: type | tuple[type, ...] | None = None) -> Any:
    """obj[key], or a SourceError naming the file and the JSON path of what is missing or wrong."""
    if not isinstance(obj, dict):
        raise SourceError(f"{path}: {where or 'top level'}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise SourceError(f"{path}: {where or 'top level'}: missing key '{key}'")
    value = obj[key]
    if kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SourceError(f"{path}: {where}.{key}: expected {names}, got {value!r:.80}")
    return value


def _read_coco_file(path: Path, split: str, root: Path) -> tuple[list[tuple], int]:
    data = _load_json(path)
    images = _get(data, "images", "", path, list)
    annotations = _get(data, "annotations", "", path, list)
    urls: dict[int, str] = {}
    for i, image in enumerate(images):
        where = f"images[{i}]"
        image_id = _get(image, "id", where, path, int)
        urls[image_id] = resolve_reference(_get(image, "coco_url", where, path, str), root)
    captions: dict[int, list[tuple[int, str]]] = {}
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        image_id = _get(ann, "image_id", where, path, int)
        ann_id = _get(ann, "id", where, path, int)
        caption = _clean(_get(ann, "caption", where, path, str))
        if image_id not in urls:
            raise SourceError(f"{path}: {where} (id {ann_id}): image_id {image_id} is not in 'images'")
        captions.setdefault(image_id, []).append((ann_id, caption))
    rows, dropped = [], 0
    for image_id in sorted(urls):
        caps = [c for _, c in sorted(captions.get(image_id, []))]
        caps = [c for c in caps if c]
        if not caps:
            dropped += 1
            continue
        rows.append((urls[image_id], caps[0], json.dumps(caps, ensure_ascii=False), str(image_id), split))
    return rows, dropped


def read_coco_captions(annotations_dir: str | Path) -> pd.DataFrame:
    """Read the official train2017/val2017 caption annotations: one row per captioned image. A
    `coco_url` without a scheme is a path relative to the folder above `annotations/`.

    Images without any caption are dropped; their count is in `df.attrs["dropped_without_captions"]`.
    """
    annotations_dir = Path(annotations_dir)
    rows, dropped = [], 0
    for split, name in COCO_FILES.items():
        path = annotations_dir / name
        _require(path, "mscoco", f"the caption annotations {name}")
        split_rows, split_dropped = _read_coco_file(path, split, annotations_dir.resolve().parent)
        rows += split_rows
        dropped += split_dropped
    if dropped:
        log.warning("mscoco: dropped %d images that have no caption", dropped)
    rows, refused = _confined(rows, annotations_dir.resolve().parent, "mscoco")  # file:// only beside annotations/
    df = _frame(rows)
    df.attrs["dropped_without_captions"] = dropped
    df.attrs["refused"] = refused
    return df


# --------------------------------------------------------------------------------------------
# Flickr30K: Karpathy's dataset_flickr30k.json + the image folder
# --------------------------------------------------------------------------------------------


# Karpathy's split names; his COCO file also has `restval` (the val2014 images not in val or test).
KARPATHY_SPLITS = ("train", "val", "test", "restval")


def read_karpathy_flickr30k(json_path: str | Path, images_dir: str | Path) -> pd.DataFrame:
    """Read Karpathy's split file; every split (train/val/test) is kept. image_id is the Flickr photo
    id (the file name's stem); url the file:// path of the image in `images_dir`."""
    json_path, images_dir = Path(json_path), Path(images_dir)
    _require(json_path, "flickr30k", "the Karpathy split file dataset_flickr30k.json")
    _require(images_dir, "flickr30k", "the Flickr30K image folder")
    images = _get(_load_json(json_path), "images", "", json_path, list)
    root = images_dir.resolve()
    rows, dropped = [], 0
    for i, image in enumerate(images):
        where = f"images[{i}]"
        filename = _get(image, "filename", where, json_path, str)
        split = _get(image, "split", where, json_path, str)
        if split not in KARPATHY_SPLITS:
            raise SourceError(f"{json_path}: {where} ({filename}): split {split!r} is not one of Karpathy's "
                              f"{', '.join(KARPATHY_SPLITS)}")
        sentences = _get(image, "sentences", where, json_path, list)
        caps = [_clean(_get(s, "raw", f"{where}.sentences[{j}]", json_path, str)) for j, s in enumerate(sentences)]
        caps = [c for c in caps if c]
        if not caps:
            dropped += 1
            continue
        url = (root / filename).as_uri()  # `..` or an absolute filename escapes root: refused below
        rows.append((url, caps[0], json.dumps(caps, ensure_ascii=False), Path(filename).stem, split))
    if dropped:
        log.warning("flickr30k: dropped %d images that have no caption", dropped)
    rows, refused = _confined(rows, root, "flickr30k")
    df = _frame(rows)
    df.attrs["dropped_without_captions"] = dropped
    df.attrs["refused"] = refused
    return df


@dataclass
class KarpathySplit:
    """One split of a Karpathy split file: each image once, with its file and all its captions."""

    image_ids: list[str]
    paths: list[Path]
    captions: list[list[str]]
    missing: int = 0  # listed images whose file is absent (skipped)


def read_karpathy_split(json_path: str | Path, images_root: str | Path, split: str = "test") -> KarpathySplit:
    """The images of one split of Karpathy's dataset_coco.json or dataset_flickr30k.json (the field's
    standard test sets: MSCOCO 5K, Flickr30K 1K). An image's file is images_root/filepath/filename
    (COCO's entries carry `filepath`, val2014 or train2014) or images_root/filename (Flickr30K's).
    image_id is COCO's `cocoid`, else the file name's stem."""
    json_path, images_root = Path(json_path), Path(images_root)
    dataset = ("mscoco" if "coco" in json_path.name else "flickr30k") + "_karpathy"
    _require(json_path, dataset, f"the Karpathy split file {json_path.name}")
    _require(images_root, dataset, "the image folder")
    if split not in KARPATHY_SPLITS:
        raise SourceError(f"split {split!r} is not one of Karpathy's {', '.join(KARPATHY_SPLITS)}")
    images = _get(_load_json(json_path), "images", "", json_path, list)
    out = KarpathySplit([], [], [])
    for i, image in enumerate(images):
        where = f"images[{i}]"
        filename = _get(image, "filename", where, json_path, str)
        image_split = _get(image, "split", where, json_path, str)
        if image_split not in KARPATHY_SPLITS:
            raise SourceError(f"{json_path}: {where} ({filename}): split {image_split!r} is not one of Karpathy's "
                              f"{', '.join(KARPATHY_SPLITS)}")
        if image_split != split:
            continue
        sentences = _get(image, "sentences", where, json_path, list)
        caps = [_clean(_get(s, "raw", f"{where}.sentences[{j}]", json_path, str)) for j, s in enumerate(sentences)]
        caps = [c for c in caps if c]
        if not caps:
            raise SourceError(f"{json_path}: {where} ({filename}): a {split} image without captions")
        path = images_root / image.get("filepath", "") / filename
        if not path.is_file():
            out.missing += 1
            continue
        out.image_ids.append(str(image["cocoid"]) if "cocoid" in image else Path(filename).stem)
        out.paths.append(path)
        out.captions.append(caps)
    if not out.paths:
        raise SourceError(f"{json_path}: no {split} image found under {images_root} ({out.missing} listed); "
                          f"to obtain them, {WHERE_TO_OBTAIN[dataset]}")
    return out


# --------------------------------------------------------------------------------------------
# ROCO v2 (Zenodo): {train,valid,test}_captions.csv + {train,valid,test}/<ID>.jpg
# --------------------------------------------------------------------------------------------


def _read_roco_csv(path: Path, split: str, image_dir: Path) -> list[tuple]:
    rows = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader, None)
            if header != ROCO_HEADER:
                raise SourceError(f"{path}: line 1: header is {header!r}; expected {ROCO_HEADER!r}")
            start = reader.line_num + 1
            for fields in reader:
                where = f"{path}: line {start}"  # a quoted caption may span lines; report where it starts
                start = reader.line_num + 1
                if not fields:
                    continue
                if len(fields) != 2:
                    raise SourceError(f"{where}: {len(fields)} fields; expected 2 (ID,Caption)")
                image_id, caption = fields[0].strip(), _clean(fields[1])
                if not image_id or "/" in image_id:
                    raise SourceError(f"{where}: bad ID {fields[0]!r}")
                if not caption:
                    raise SourceError(f"{where}: empty caption for {image_id}")
                url = (image_dir / f"{image_id}.jpg").as_uri()
                rows.append((url, caption, json.dumps([caption], ensure_ascii=False), image_id, split))
        except csv.Error as e:
            raise SourceError(f"{path}: line {reader.line_num}: malformed CSV: {e}") from None
    return rows


def read_roco(root: str | Path) -> pd.DataFrame:
    """Read ROCO v2 as released on Zenodo; splits keep their names train/valid/test."""
    root = Path(root)
    _require(root, "roco", "the ROCO v2 folder")
    rows, refused = [], Counter()
    for split in ROCO_SPLITS:
        path = root / f"{split}_captions.csv"
        _require(path, "roco", f"the caption file {path.name}")
        split_rows, split_refused = _confined(_read_roco_csv(path, split, (root / split).resolve()), root / split,
                                              "roco")
        rows += split_rows
        refused.update(split_refused)
    df = _frame(rows)
    df.attrs["refused"] = dict(refused)
    return df


# --------------------------------------------------------------------------------------------
# Dispatch on the dataset name
# --------------------------------------------------------------------------------------------


def read_source(dataset: str, sources_cfg: Any) -> pd.DataFrame:
    """The URL list of one dataset, from the paths in `data.sources` (a `SourcesConfig`), whole,
    with the refused rows' counts in attrs["refused"]."""
    refused: Counter = Counter()
    df = pd.concat(list(source_chunks(dataset, sources_cfg, refused)), ignore_index=True)
    df.attrs["refused"] = dict(refused)
    return df


def source_chunks(dataset: str, sources_cfg: Any, refused: Counter) -> Iterator[pd.DataFrame]:
    """The URL list of one dataset in chunks (CC12M's read lazily, CHUNK_ROWS rows at a time; the
    others, a few hundred thousand rows at most, whole), counting the refused rows into `refused`.
    A missing file is reported here, before any chunk is read; a malformed CC12M line when its chunk
    is."""
    if dataset not in DATASETS:
        raise SourceError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    keys = SOURCE_KEYS[dataset]
    paths = [Path(getattr(sources_cfg, key)) for key in keys]
    for (key, what), path in zip(keys.items(), paths):
        _require(path, dataset, what, key)
    if dataset == "cc12m":
        return cc12m_tsv_chunks(paths[0], refused)
    if dataset == "mscoco":
        df = read_coco_captions(paths[0])
    elif dataset == "flickr30k":
        df = read_karpathy_flickr30k(paths[0], paths[1])
    else:
        df = read_roco(paths[0])
    refused.update(df.attrs.get("refused", {}))
    return iter([df])
