"""Embedded demo datasets: small stand-ins for CC12M, MSCOCO, Flickr30K and ROCO v2.

No dataset hub is reachable offline, so the demo pipeline generates its raw data. Each stand-in is
written in the exact on-disk layout of the real dataset, so the real ingest code reads it unchanged:

    <out_dir>/cc12m/cc12m.tsv                          url<TAB>caption, no header (paths relative to cc12m/)
    <out_dir>/cc12m/images/000000.jpg ...
    <out_dir>/mscoco/annotations/captions_{train,val}2017.json
    <out_dir>/mscoco/{train,val}2017/000000391895.jpg ...
    <out_dir>/flickr30k/dataset_flickr30k.json         Karpathy split file
    <out_dir>/flickr30k/flickr30k-images/1000092795.jpg ...
    <out_dir>/roco/{train,valid,test}_captions.csv     ID,Caption (Zenodo ROCOv2 layout)
    <out_dir>/roco/{train,valid,test}/ROCOv2_2023_train_000001.jpg ...
    <out_dir>/mscoco/dataset_coco.json                 Karpathy split file (its test split: the 5K test)
    <out_dir>/mscoco/val2014/COCO_val2014_000000522418.jpg ...
    <out_dir>/classify/<colour>_<shape>/*.jpg          classification set, ImageNet's folder-per-class layout
    <out_dir>/classify/classnames.txt                  its class names, one per line (sorted-folder order)
    <out_dir>/scenes.jsonl                             ground truth of every drawn image (not a real file)

Images are drawn scenes whose captions say what is in them: one to three coloured shapes of two sizes,
in a row or a column, on a plain background ("a large red circle to the left of a small blue
triangle on a white background"). ROCO images are grayscale scan-like drawings instead (a body
outline with bright or dark lesions) with radiology-style captions; as in radiology, the patient's
left is on the image's right.

Every URL list also holds `bad_rows_per_kind` planted failures of each kind (a missing file, a file
that is not an image, a JPEG cut off inside its header), so failure accounting runs on every run.
Output is a pure function of the config: the same seed gives byte-identical files. Each dataset
split draws from its own random stream, so resizing one dataset leaves the others unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import shutil
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.names import DATASETS

JPEG_QUALITY = 90
BAD_KINDS = ("missing_file", "not_an_image", "truncated_jpeg")
DATASET_DIRS = DATASETS  # one folder per dataset (pipeline/names.py)
SCENES_FILE = "scenes.jsonl"
NOT_AN_IMAGE = b"<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n"

# --------------------------------------------------------------------------------------------
# Shape scenes (CC12M, MSCOCO, Flickr30K)
# --------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon", "ring")
COLORS = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220), "yellow": (240, 215, 30),
    "orange": (245, 135, 20), "purple": (130, 40, 170), "pink": (245, 125, 190),
    "brown": (125, 75, 30), "black": (15, 15, 15), "white": (245, 245, 245),
    "gray": (128, 128, 128), "cyan": (30, 200, 220),
}
BACKGROUNDS = {
    "white": (250, 250, 250), "black": (10, 10, 10), "gray": (150, 150, 150),
    "beige": (225, 210, 170), "light blue": (170, 200, 240), "dark green": (20, 70, 40),
}
SIZE_WORDS = {"large": ("large", "big"), "small": ("small", "little")}
POSITION_WORDS = {
    "horizontal": ("on the left", "in the center", "on the right"),
    "vertical": ("at the top", "in the center", "at the bottom"),
}

# {A}, {B}, {C}: objects in reading order (left to right or top to bottom), with their article;
# {a}: the single object without article; {bg}: background colour; {pos}: the single object's place.
TEMPLATES = {
    (1, "any"): (
        "{A} {pos} on a {bg} background", "{A} {pos} of the image", "a picture of {A} on a plain {bg} background",
        "one {a} against a {bg} background", "a single {a} drawn on {bg}", "an image showing {A} {pos}",
        "there is {A} on a {bg} background",
    ),
    (2, "horizontal"): (
        "{A} to the left of {B} on a {bg} background", "{B} to the right of {A}",
        "{A} next to {B} against a {bg} background", "two shapes side by side, {A} and {B}",
        "there is {A} on the left and {B} on the right", "a picture of {A} and {B} on a {bg} background",
        "{A} and {B} drawn next to each other",
    ),
    (2, "vertical"): (
        "{A} above {B} on a {bg} background", "{B} below {A}", "{B} under {A} against a {bg} background",
        "two shapes, one above the other, {A} and {B}", "there is {A} at the top and {B} at the bottom",
        "a picture of {A} and {B} on a {bg} background", "{A} drawn over {B}",
    ),
    (3, "horizontal"): (
        "three shapes from left to right, {A}, {B} and {C}", "{B} between {A} and {C} on a {bg} background",
        "{A} on the left, {B} in the center and {C} on the right",
        "there are three shapes on a {bg} background, {A}, {B} and {C}",
        "{A} to the left of {B}, which is to the left of {C}", "{C} to the right of {B} and {A}",
        "a picture of {A}, {B} and {C} in a row",
    ),
    (3, "vertical"): (
        "three shapes from top to bottom, {A}, {B} and {C}", "{B} between {A} above and {C} below",
        "{A} at the top, {B} in the center and {C} at the bottom",
        "there are three shapes on a {bg} background, {A}, {B} and {C}",
        "{A} above {B}, which is above {C}", "{C} below {B} and {A}",
        "a picture of {A}, {B} and {C} in a column",
    ),
}


@dataclass
class Shape:
    shape: str
    color: str
    size: str  # "large" or "small"
    center: tuple[int, int]
    radius: int
    anchor: tuple[int, int]  # a pixel the shape surely covers (for checks)


@dataclass
class Scene:
    width: int
    height: int
    background: str
    layout: str  # "horizontal" or "vertical": the axis the objects are spread along
    objects: list[Shape] = field(default_factory=list)  # in reading order
    position: str = ""  # for a single object: where it is ("on the left", ...)


def _image_size(rnd: random.Random, min_side: int, max_side: int) -> tuple[int, int]:
    return rnd.randint(min_side, max_side), rnd.randint(min_side, max_side)


def _contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> int:
    return sum(abs(x - y) for x, y in zip(a, b))


def make_scene(rnd: random.Random, width: int, height: int, only: tuple[str, str] | None = None) -> Scene:
    """A random scene of one to three shapes laid out in a row or a column; with `only` = (shape,
    colour), that one shape alone (the classification set's images)."""
    if only is None:
        background = rnd.choice(sorted(BACKGROUNDS))
    else:
        background = rnd.choice([b for b in sorted(BACKGROUNDS) if _contrast(COLORS[only[1]], BACKGROUNDS[b]) > 120])
    bg_rgb = BACKGROUNDS[background]
    colors = [c for c in COLORS if _contrast(COLORS[c], bg_rgb) > 120]
    n = 1 if only else rnd.choice((1, 2, 2, 3, 3))
    ratio = width / height
    layout = "horizontal" if ratio > 1.2 else "vertical" if ratio < 1 / 1.2 else rnd.choice(("horizontal", "vertical"))
    cells = 3 if n == 1 else n
    slots = [rnd.randrange(3)] if n == 1 else list(range(n))
    cw, ch = (width / cells, height) if layout == "horizontal" else (width, height / cells)
    m = min(cw, ch)
    kinds: set[tuple[str, str]] = set()
    objects = []
    for slot in slots:
        shape, color = only or (rnd.choice(SHAPES), rnd.choice(colors))
        while (shape, color) in kinds:  # distinct objects keep captions unambiguous
            shape, color = rnd.choice(SHAPES), rnd.choice(colors)
        kinds.add((shape, color))
        size = rnd.choice(("large", "small"))
        radius = max(4, round(m * (rnd.uniform(0.36, 0.44) if size == "large" else rnd.uniform(0.18, 0.24))))
        x0, y0 = (slot * cw, 0.0) if layout == "horizontal" else (0.0, slot * ch)
        jx, jy = max(0.0, cw / 2 - radius) * 0.5, max(0.0, ch / 2 - radius) * 0.5
        cx = round(x0 + cw / 2 + rnd.uniform(-jx, jx))
        cy = round(y0 + ch / 2 + rnd.uniform(-jy, jy))
        anchor = (cx + round(radius - _ring_width(radius) / 2), cy) if shape == "ring" else (cx, cy + round(radius * 0.1))
        objects.append(Shape(shape, color, size, (cx, cy), radius, anchor))
    position = POSITION_WORDS[layout][slots[0]] if n == 1 else ""
    return Scene(width, height, background, layout, objects, position)


def _ring_width(radius: int) -> int:
    return max(2, round(radius * 0.35))


def _polygon(cx: int, cy: int, r: float, points: int, phase: float, inner: float | None = None) -> list[tuple[float, float]]:
    out = []
    steps = points * (2 if inner else 1)
    for k in range(steps):
        rad = r if inner is None or k % 2 == 0 else r * inner
        t = phase + 2 * math.pi * k / steps
        out.append((cx + rad * math.cos(t), cy + rad * math.sin(t)))
    return out


def draw_scene(scene: Scene) -> Image.Image:
    img = Image.new("RGB", (scene.width, scene.height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        (cx, cy), r, fill = o.center, o.radius, COLORS[o.color]
        box = (cx - r, cy - r, cx + r, cy + r)
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "ring":
            draw.ellipse(box, outline=fill, width=_ring_width(r))
        elif o.shape == "square":
            s = r * 0.85
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        elif o.shape == "triangle":
            draw.polygon(_polygon(cx, cy, r, 3, -math.pi / 2), fill=fill)
        elif o.shape == "star":
            draw.polygon(_polygon(cx, cy, r, 5, -math.pi / 2, inner=0.45), fill=fill)
        elif o.shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=fill)
        elif o.shape == "hexagon":
            draw.polygon(_polygon(cx, cy, r, 6, 0.0), fill=fill)
        elif o.shape == "cross":
            t = max(1.0, r * 0.3)
            draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
            draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    return img


def _noun_phrase(o: Shape, rnd: random.Random) -> str:
    words = [o.color, o.shape]
    if rnd.random() < 0.8:
        words.insert(0, rnd.choice(SIZE_WORDS[o.size]))
    return " ".join(words)


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def scene_captions(scene: Scene, rnd: random.Random, k: int) -> list[str]:
    """k differently worded lowercase captions of one scene (distinct templates while they last)."""
    n = len(scene.objects)
    pool = list(TEMPLATES[(n, "any" if n == 1 else scene.layout)])
    rnd.shuffle(pool)
    captions = []
    for i in range(k):
        phrases = [_noun_phrase(o, rnd) for o in scene.objects]
        slots = {"bg": scene.background, "pos": scene.position, "a": phrases[0]}
        slots.update({"ABC"[j]: _with_article(p) for j, p in enumerate(phrases)})
        captions.append(pool[i % len(pool)].format(**slots))
    return captions


def _scene_record(scene: Scene) -> dict[str, Any]:
    return {"kind": "shapes", "width": scene.width, "height": scene.height, "background": scene.background,
            "layout": scene.layout, "position": scene.position, "objects": [asdict(o) for o in scene.objects]}


# --------------------------------------------------------------------------------------------
# Scan-like images (ROCO)
# --------------------------------------------------------------------------------------------

MODALITY_WORDS = {"CT": ("hyperdense", "hypodense"), "MRI": ("hyperintense", "hypointense"),
                  "X-ray": ("radiopaque", "radiolucent")}
REGIONS = ("head", "chest", "abdomen")


@dataclass
class Lesion:
    brightness: str  # "bright" or "dark"
    size: str  # "large" or "small"
    side: str  # the patient's "left" (image right) or "right" (image left)
    level: str  # "upper" or "lower"
    center: tuple[int, int] = (0, 0)
    radius: int = 0


@dataclass
class Scan:
    width: int
    height: int
    modality: str  # "CT", "MRI" or "X-ray"
    plane: str  # "axial", "coronal", "sagittal" or "" (X-ray)
    region: str
    body: tuple[float, float]  # semi-axes of the body outline, centred in the image
    lesions: list[Lesion] = field(default_factory=list)
    noise_seed: int = 0


def make_scan(rnd: random.Random, width: int, height: int) -> Scan:
    modality = rnd.choice(("CT", "CT", "MRI", "X-ray"))
    region = "chest" if modality == "X-ray" else rnd.choice(REGIONS)
    plane = "" if modality == "X-ray" else rnd.choice(("axial", "axial", "coronal", "sagittal"))
    a, b = (min(width, height) * 0.42,) * 2 if region == "head" else (width * 0.45, height * 0.40)
    places = rnd.sample([(s, lv) for s in ("left", "right") for lv in ("upper", "lower")], rnd.choice((0, 1, 1, 2)))
    lesions = []
    for side, level in places:
        size = rnd.choice(("large", "small"))
        lx = width / 2 + (1 if side == "left" else -1) * a * 0.45  # the patient's left is the image's right
        ly = height / 2 + (-1 if level == "upper" else 1) * b * 0.45
        r = max(2, round(min(width, height) * (0.12 if size == "large" else 0.06)))
        lesions.append(Lesion(rnd.choice(("bright", "dark")), size, side, level, (round(lx), round(ly)), r))
    return Scan(width, height, modality, plane, region, (a, b), lesions, rnd.getrandbits(63))


def draw_scan(scan: Scan) -> Image.Image:
    """Dark background, a bright body outline, inner structure, lesions, blur and noise; mode L."""
    w, h = scan.width, scan.height
    rng = np.random.default_rng(scan.noise_seed)
    img = Image.new("L", (w, h), int(rng.integers(0, 20)))
    draw = ImageDraw.Draw(img)
    cx, cy = w / 2, h / 2
    a, b = scan.body
    edge = max(2, round(min(w, h) / 30))
    draw.ellipse((cx - a, cy - b, cx + a, cy + b), fill=int(rng.integers(85, 115)),
                 outline=int(rng.integers(200, 240)), width=edge)
    if scan.region == "chest":  # two dark lungs
        for sx in (-1, 1):
            lx = cx + sx * a * 0.45
            draw.ellipse((lx - a * 0.33, cy - b * 0.6, lx + a * 0.33, cy + b * 0.6), fill=int(rng.integers(45, 65)))
    elif scan.region == "abdomen":  # a slightly brighter organ
        draw.ellipse((cx - a * 0.6, cy - b * 0.5, cx + a * 0.1, cy + b * 0.3), fill=int(rng.integers(125, 150)))
    else:  # brain inside the skull
        draw.ellipse((cx - a * 0.8, cy - b * 0.8, cx + a * 0.8, cy + b * 0.8), fill=int(rng.integers(115, 140)))
    for les in scan.lesions:
        (lx, ly), r = les.center, les.radius
        fill = int(rng.integers(225, 256)) if les.brightness == "bright" else int(rng.integers(0, 15))
        draw.ellipse((lx - r, ly - r, lx + r, ly + r), fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(1))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, rng.uniform(6, 14), size=(h, w))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def _lesion_phrase(les: Lesion, modality: str) -> str:
    density = MODALITY_WORDS[modality][0 if les.brightness == "bright" else 1]
    return f"a {les.size} {density} lesion in the {les.side} {les.level} region"


def scan_caption(scan: Scan, rnd: random.Random) -> str:
    kind = {"CT": "CT", "MRI": "MR", "X-ray": "X-ray"}[scan.modality]
    head = f"{scan.plane.capitalize()} {kind} image of the {scan.region}" if scan.plane else "Chest X-ray"
    if not scan.lesions:
        finding = rnd.choice(("no focal lesion", "no focal lesion, normal appearance"))
    elif len(scan.lesions) == 1:
        finding = _lesion_phrase(scan.lesions[0], scan.modality)
    else:
        finding = "two lesions, " + " and ".join(_lesion_phrase(les, scan.modality) for les in scan.lesions)
    tail = rnd.choice(("", " (arrow)", ", see arrows", ", with surrounding edema")) if scan.lesions else ""
    verb = rnd.choice(("showing", "demonstrating", "revealing"))
    sep = rnd.choice((" ", ", "))
    return f"{head}{sep}{verb} {finding}{tail}."


def _scan_record(scan: Scan) -> dict[str, Any]:
    d = asdict(scan)
    d.pop("noise_seed")
    return {"kind": "scan", **d}


# --------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4 keeps small shapes' colours
    return buf.getvalue()


def _header_end(data: bytes) -> int:
    """Offset of the first SOF/SOS marker: a JPEG cut there has no frame header, so no decoder opens it."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xDA):
            return pos
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return pos


def _truncated_jpeg(rnd: random.Random) -> bytes:
    data = _jpeg_bytes(draw_scene(make_scene(rnd, 96, 96)))
    return data[: min(rnd.randint(100, 200), _header_end(data))]


class _Writer:
    """Writes images and planted bad files under one root and keeps the summary's records."""

    def __init__(self, root: Path):
        self.root = root
        self.bad_rows: list[dict[str, Any]] = []
        self.scenes: list[dict[str, Any]] = []

    def url(self, rel: str) -> str:
        """How the dataset's own files name the image `rel` (`<dataset>/<path>`): by its path relative
        to the dataset's folder, which the readers resolve (pipeline/data/sources.py), so the files
        are the same bytes wherever the checkout lives and a clone's `dvc pull` finds them current."""
        return urllib.parse.quote(rel.split("/", 1)[1])

    def image(self, rel: str, img: Image.Image, record: dict[str, Any]) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg_bytes(img))
        self.scenes.append({"path": rel, **record})

    def bad(self, dataset: str, split: str, kind: str, key: Any, rel: str, rnd: random.Random) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "not_an_image":
            path.write_bytes(NOT_AN_IMAGE)
        elif kind == "truncated_jpeg":
            path.write_bytes(_truncated_jpeg(rnd))
        self.bad_rows.append({"dataset": dataset, "split": split, "kind": kind, "key": key,
                              "path": rel, "url": self.url(rel)})


def _plan(rnd: random.Random, good: int, bad_per_kind: int) -> list[str | None]:
    """Row kinds in order: None for a good row, else a bad kind, at random positions."""
    kinds: list[str | None] = [None] * good + [k for k in BAD_KINDS for _ in range(bad_per_kind)]
    rnd.shuffle(kinds)
    return kinds


def _stream(cfg: Any, *names: str) -> random.Random:
    return random.Random(f"grr-coca-demo:{cfg.seed}:" + ":".join(names))


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _counts(plan: list[str | None], captions: int) -> dict[str, int]:
    bad = sum(k is not None for k in plan)
    return {"entries": len(plan), "good": len(plan) - bad, "bad": bad, "captions": captions}


def _write_cc12m(cfg: Any, w: _Writer) -> dict[str, Any]:
    rnd = _stream(cfg, "cc12m")
    plan = _plan(rnd, cfg.cc12m_rows, cfg.bad_rows_per_kind)
    lines = []
    for i, kind in enumerate(plan):
        rel = f"cc12m/images/{i:06d}.jpg"
        scene = make_scene(rnd, *_image_size(rnd, cfg.min_side, cfg.max_side))
        caption = _capitalize(scene_captions(scene, rnd, 1)[0])
        if kind is None:
            w.image(rel, draw_scene(scene), _scene_record(scene))
        else:
            w.bad("cc12m", "all", kind, w.url(rel), rel, rnd)
        lines.append(f"{w.url(rel)}\t{caption}\n")
    (w.root / "cc12m").mkdir(parents=True, exist_ok=True)
    (w.root / "cc12m/cc12m.tsv").write_text("".join(lines), encoding="utf-8", newline="")
    return {"all": _counts(plan, len(plan))}


COCO_LICENSES = [
    {"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "Attribution-NonCommercial-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nc/2.0/", "id": 2, "name": "Attribution-NonCommercial License"},
    {"url": "http://creativecommons.org/licenses/by-nc-nd/2.0/", "id": 3, "name": "Attribution-NonCommercial-NoDerivs License"},
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"},
    {"url": "http://creativecommons.org/licenses/by-sa/2.0/", "id": 5, "name": "Attribution-ShareAlike License"},
    {"url": "http://creativecommons.org/licenses/by-nd/2.0/", "id": 6, "name": "Attribution-NoDerivs License"},
    {"url": "http://flickr.com/commons/usage/", "id": 7, "name": "No known copyright restrictions"},
    {"url": "http://www.usa.gov/copyright.shtml", "id": 8, "name": "United States Government Work"},
]


def _write_mscoco(cfg: Any, w: _Writer) -> dict[str, Any]:
    plans = {"train": _plan(_stream(cfg, "mscoco", "train", "plan"), cfg.mscoco_train_images, cfg.bad_rows_per_kind),
             "val": _plan(_stream(cfg, "mscoco", "val", "plan"), cfg.mscoco_val_images, 0)}
    k = cfg.captions_per_image
    ids = _stream(cfg, "mscoco", "ids")
    image_ids = iter(ids.sample(range(1, 581930), sum(map(len, plans.values()))))
    caption_ids = iter(ids.sample(range(1, 830000), k * sum(map(len, plans.values()))))
    counts = {}
    for split, plan in plans.items():
        rnd = _stream(cfg, "mscoco", split)
        images, annotations = [], []
        for kind in plan:
            image_id = next(image_ids)
            file_name = f"{image_id:012d}.jpg"
            rel = f"mscoco/{split}2017/{file_name}"
            scene = make_scene(rnd, *_image_size(rnd, cfg.min_side, cfg.max_side))
            day = rnd.randrange(1, 29)
            images.append({
                "license": rnd.randint(1, 8), "file_name": file_name, "coco_url": w.url(rel),
                "height": scene.height, "width": scene.width,
                "date_captured": f"2013-{rnd.randint(11, 12):02d}-{day:02d} {rnd.randrange(24):02d}:"
                                 f"{rnd.randrange(60):02d}:{rnd.randrange(60):02d}",
                "flickr_url": w.url(rel), "id": image_id,
            })
            for caption in scene_captions(scene, rnd, k):
                text = _capitalize(caption) + ("." if rnd.random() < 0.7 else "")
                annotations.append({"image_id": image_id, "id": next(caption_ids), "caption": text})
            if kind is None:
                w.image(rel, draw_scene(scene), _scene_record(scene))
            else:
                w.bad("mscoco", split, kind, image_id, rel, rnd)
        rnd.shuffle(annotations)  # the real files are not grouped by image
        doc = {
            "info": {"description": "COCO 2017 Dataset (grr-coca embedded demo stand-in)", "url": "http://cocodataset.org",
                     "version": "1.0", "year": 2017, "contributor": "COCO Consortium", "date_created": "2017/09/01"},
            "licenses": COCO_LICENSES, "images": images, "annotations": annotations,
        }
        path = w.root / f"mscoco/annotations/captions_{split}2017.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc), encoding="utf-8")
        counts[split] = _counts(plan, len(annotations))
    return counts


def karpathy_tokens(raw: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", raw.lower())


def _write_flickr30k(cfg: Any, w: _Writer) -> dict[str, Any]:
    plan_rnd = _stream(cfg, "flickr30k", "plan")
    plans = {"train": _plan(plan_rnd, cfg.flickr30k_train_images, cfg.bad_rows_per_kind),
             "val": _plan(plan_rnd, cfg.flickr30k_val_images, 0),
             "test": _plan(plan_rnd, cfg.flickr30k_test_images, 0)}
    order = [(split, kind) for split, plan in plans.items() for kind in plan]
    plan_rnd.shuffle(order)  # splits are interleaved in the real file
    names = plan_rnd.sample(range(10_000_000, 9_999_999_999), len(order))
    rnd = _stream(cfg, "flickr30k")
    k = cfg.captions_per_image
    images = []
    for imgid, ((split, kind), name) in enumerate(zip(order, names)):
        filename = f"{name}.jpg"
        rel = f"flickr30k/flickr30k-images/{filename}"
        scene = make_scene(rnd, *_image_size(rnd, cfg.min_side, cfg.max_side))
        sentences = []
        for j, caption in enumerate(scene_captions(scene, rnd, k)):
            raw = _capitalize(caption) + "."
            sentences.append({"tokens": karpathy_tokens(raw), "raw": raw, "imgid": imgid, "sentid": imgid * k + j})
        images.append({"sentids": [s["sentid"] for s in sentences], "imgid": imgid, "sentences": sentences,
                       "split": split, "filename": filename})
        if kind is None:
            w.image(rel, draw_scene(scene), _scene_record(scene))
        else:
            w.bad("flickr30k", split, kind, filename, rel, rnd)
    (w.root / "flickr30k/flickr30k-images").mkdir(parents=True, exist_ok=True)
    doc = {"images": images, "dataset": "flickr30k"}
    (w.root / "flickr30k/dataset_flickr30k.json").write_text(json.dumps(doc), encoding="utf-8")
    return {split: _counts(plan, len(plan) * k) for split, plan in plans.items()}


def _write_mscoco_karpathy(cfg: Any, w: _Writer) -> dict[str, Any]:
    """Karpathy's dataset_coco.json and its images in COCO 2014's layout (val2014/COCO_val2014_<id>.jpg):
    the test split is the MSCOCO 5K test of the benchmark stage; a few val and restval entries stand in
    for the rest of the file. Not used for training (the MSCOCO fine-tuning reads the 2017 files)."""
    rnd = _stream(cfg, "mscoco_karpathy")
    n_test = cfg.mscoco_karpathy_test_images
    splits = ["test"] * n_test + ["val", "restval"] * max(1, n_test // 10)
    rnd.shuffle(splits)  # splits are interleaved in the real file
    ids = rnd.sample(range(1, 581930), len(splits))
    k = cfg.captions_per_image
    images = []
    for imgid, (split, cocoid) in enumerate(zip(splits, ids)):
        filename = f"COCO_val2014_{cocoid:012d}.jpg"
        scene = make_scene(rnd, *_image_size(rnd, cfg.min_side, cfg.max_side))
        sentences = []
        for j, caption in enumerate(scene_captions(scene, rnd, k)):
            raw = _capitalize(caption) + ("." if rnd.random() < 0.7 else "")
            sentences.append({"tokens": karpathy_tokens(raw), "raw": raw, "imgid": imgid, "sentid": imgid * k + j})
        images.append({"filepath": "val2014", "sentids": [s["sentid"] for s in sentences], "filename": filename,
                       "imgid": imgid, "split": split, "sentences": sentences, "cocoid": cocoid})
        w.image(f"mscoco/val2014/{filename}", draw_scene(scene), _scene_record(scene))
    doc = {"images": images, "dataset": "coco"}
    (w.root / "mscoco/dataset_coco.json").write_text(json.dumps(doc), encoding="utf-8")
    return {split: {"entries": splits.count(split), "good": splits.count(split), "bad": 0,
                    "captions": splits.count(split) * k} for split in ("test", "val", "restval")}


CLASSIFY_DIR = "classify"
CLASS_NAMES_FILE = "classnames.txt"


def classify_classes(cfg: Any) -> list[tuple[str, str]]:
    """The classification set's (colour, shape) classes, in class-index order (sorted folder names)."""
    pairs = [(c, s) for c in sorted(COLORS) for s in SHAPES]
    _stream(cfg, "classify", "classes").shuffle(pairs)
    return sorted(pairs[: cfg.classify_classes], key=lambda p: f"{p[0]}_{p[1]}")


def _write_classify(cfg: Any, w: _Writer) -> dict[str, Any]:
    """An image-classification set in ImageNet's folder-per-class layout (classify/<colour>_<shape>/*.jpg)
    with classnames.txt (one name per line, in sorted-folder order, as the ImageNet class-names file):
    one shape per image, named as the captions name it ("red circle"), on a random background."""
    rnd = _stream(cfg, "classify")
    classes = classify_classes(cfg)
    for color, shape in classes:
        folder = f"{color}_{shape}"
        for i in range(cfg.classify_images_per_class):
            scene = make_scene(rnd, *_image_size(rnd, cfg.min_side, cfg.max_side), only=(shape, color))
            w.image(f"{CLASSIFY_DIR}/{folder}/{folder}_{i:04d}.jpg", draw_scene(scene), _scene_record(scene))
    (w.root / CLASSIFY_DIR / CLASS_NAMES_FILE).write_text("".join(f"{c} {s}\n" for c, s in classes), encoding="utf-8")
    n = len(classes) * cfg.classify_images_per_class
    return {"all": {"entries": n, "good": n, "bad": 0, "captions": 0, "classes": len(classes)}}


def _write_roco(cfg: Any, w: _Writer) -> dict[str, Any]:
    sizes = {"train": (cfg.roco_train, cfg.bad_rows_per_kind), "valid": (cfg.roco_valid, 0), "test": (cfg.roco_test, 0)}
    counts = {}
    for split, (good, bad) in sizes.items():
        rnd = _stream(cfg, "roco", split)
        plan = _plan(rnd, good, bad)
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(["ID", "Caption"])
        for i, kind in enumerate(plan, start=1):
            image_id = f"ROCOv2_2023_{split}_{i:06d}"
            rel = f"roco/{split}/{image_id}.jpg"
            scan = make_scan(rnd, *_image_size(rnd, cfg.min_side, cfg.max_side))
            out.writerow([image_id, scan_caption(scan, rnd)])
            if kind is None:
                w.image(rel, draw_scan(scan), _scan_record(scan))
            else:
                w.bad("roco", split, kind, image_id, rel, rnd)
        (w.root / f"roco/{split}").mkdir(parents=True, exist_ok=True)
        (w.root / f"roco/{split}_captions.csv").write_text(buf.getvalue(), encoding="utf-8", newline="")
        counts[split] = _counts(plan, len(plan))
    return counts


def generate_demo(cfg: Any, out_dir: Path) -> dict[str, Any]:
    """Write the four demo datasets under `out_dir` and return a summary.

    `cfg` is a `pipeline.config.DemoDataConfig` (or any object with its attributes). Existing
    `cc12m/`, `mscoco/`, `flickr30k/`, `roco/` and `scenes.jsonl` under `out_dir` are replaced.
    The summary holds `counts[dataset][split]` (`entries`, `good`, `bad`, `captions`) and
    `bad_rows`: one dict per planted failure (`dataset`, `split`, `kind`, `key`, `path`, `url`),
    where `key` is the row's URL (CC12M), image id (MSCOCO), file name (Flickr30K) or ID (ROCO).
    """
    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for name in (*DATASET_DIRS, CLASSIFY_DIR):
        shutil.rmtree(root / name, ignore_errors=True)
    (root / SCENES_FILE).unlink(missing_ok=True)
    w = _Writer(root)
    counts = {"cc12m": _write_cc12m(cfg, w), "mscoco": _write_mscoco(cfg, w),
              "flickr30k": _write_flickr30k(cfg, w), "roco": _write_roco(cfg, w),
              "mscoco_karpathy": _write_mscoco_karpathy(cfg, w), "classify": _write_classify(cfg, w)}
    with open(root / SCENES_FILE, "w", encoding="utf-8", newline="") as f:
        for record in w.scenes:
            f.write(json.dumps(record) + "\n")
    return {
        "seed": cfg.seed,
        "counts": counts,
        "bad_rows": w.bad_rows,
        "files": {
            "cc12m_tsv": "cc12m/cc12m.tsv",
            "mscoco_annotations": "mscoco/annotations",
            "flickr30k_json": "flickr30k/dataset_flickr30k.json",
            "flickr30k_images": "flickr30k/flickr30k-images",
            "roco_root": "roco",
            "coco_karpathy_json": "mscoco/dataset_coco.json",
            "coco_images": "mscoco",
            "imagenet_val": CLASSIFY_DIR,
            "imagenet_classes": f"{CLASSIFY_DIR}/{CLASS_NAMES_FILE}",
            "scenes": SCENES_FILE,
        },
    }
