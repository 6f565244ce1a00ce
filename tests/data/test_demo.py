"""The embedded demo datasets: real on-disk formats, captions true to the images, planted failures."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.config import ConfigError, build_config
from pipeline.data.demo import (
    BAD_KINDS,
    COLORS,
    SHAPES,
    draw_scan,
    draw_scene,
    generate_demo,
    karpathy_tokens,
    make_scan,
    make_scene,
    scan_caption,
    scene_captions,
)

SMALL = dict(
    cc12m_rows=40, mscoco_train_images=10, mscoco_val_images=4, flickr30k_train_images=8, flickr30k_val_images=3,
    flickr30k_test_images=2, roco_train=8, roco_valid=3, roco_test=2, bad_rows_per_kind=2,
    mscoco_karpathy_test_images=6, classify_classes=5, classify_images_per_class=3,
)


def make_cfg(**overrides):
    """The demo preset's data.demo section, with some sizes changed (checked as the configuration is)."""
    return dataclasses.replace(build_config({"preset": "demo"}).data.demo, **overrides)


TINY = dict(SMALL, seed=1, min_side=32, max_side=80, bad_rows_per_kind=1)  # like the smoke preset


@pytest.fixture(scope="module", params=[SMALL, TINY], ids=["small", "tiny"])
def demo(request, tmp_path_factory):
    cfg = make_cfg(**request.param)
    root = tmp_path_factory.mktemp("demo")
    return cfg, root.resolve(), generate_demo(cfg, root)


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def url_path(url: str, folder: Path) -> Path:
    """The file a demo URL names: a path relative to its dataset's folder, never an absolute URL."""
    assert not urlparse(url).scheme and not url.startswith("/"), url
    return folder / url2pathname(url)


def read_tsv(root: Path) -> list[list[str]]:
    return [line.split("\t") for line in (root / "cc12m/cc12m.tsv").read_text(encoding="utf-8").splitlines()]


def read_roco(root: Path, split: str) -> list[dict[str, str]]:
    with open(root / f"roco/{split}_captions.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def scenes(root: Path) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, (root / "scenes.jsonl").read_text().splitlines())}


def bad_paths(summary) -> set[str]:
    return {b["path"] for b in summary["bad_rows"]}


# --------------------------------------------------------------------------------------------
# Determinism and sizes
# --------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path):
    cfg = make_cfg(**SMALL)
    first = file_hashes((generate_demo(cfg, tmp_path / "a"), tmp_path / "a")[1])
    generate_demo(cfg, tmp_path / "a")  # regenerating in place replaces everything
    assert file_hashes(tmp_path / "a") == first
    # In another folder too: the files name their images relative to their own folders, so a clone
    # elsewhere that regenerates them gets what `dvc pull` gave it.
    generate_demo(cfg, tmp_path / "b")
    assert file_hashes(tmp_path / "b") == first


def test_other_seed_gives_other_data(tmp_path):
    generate_demo(make_cfg(**SMALL), tmp_path / "a")
    generate_demo(make_cfg(**SMALL, seed=1), tmp_path / "b")
    assert [r[1] for r in read_tsv(tmp_path / "a")] != [r[1] for r in read_tsv(tmp_path / "b")]


def test_resizing_one_dataset_leaves_the_others(tmp_path):
    generate_demo(make_cfg(**SMALL), tmp_path / "a")
    generate_demo(make_cfg(**{**SMALL, "cc12m_rows": 7}), tmp_path / "b")
    for rel in ("flickr30k/dataset_flickr30k.json", "roco/train_captions.csv"):
        assert (tmp_path / "a" / rel).read_text().replace(str(tmp_path / "a"), "") == \
            (tmp_path / "b" / rel).read_text().replace(str(tmp_path / "b"), "")


def test_counts_match_cfg(demo):
    cfg, root, summary = demo
    n = cfg.bad_rows_per_kind * len(BAD_KINDS)
    c = summary["counts"]
    assert c["cc12m"]["all"] == {"entries": cfg.cc12m_rows + n, "good": cfg.cc12m_rows, "bad": n,
                                 "captions": cfg.cc12m_rows + n}
    assert (c["mscoco"]["train"]["good"], c["mscoco"]["train"]["bad"]) == (cfg.mscoco_train_images, n)
    assert (c["mscoco"]["val"]["good"], c["mscoco"]["val"]["bad"]) == (cfg.mscoco_val_images, 0)
    assert c["mscoco"]["train"]["captions"] == (cfg.mscoco_train_images + n) * cfg.captions_per_image
    assert [c["flickr30k"][s]["good"] for s in ("train", "val", "test")] == \
        [cfg.flickr30k_train_images, cfg.flickr30k_val_images, cfg.flickr30k_test_images]
    assert [c["roco"][s]["good"] for s in ("train", "valid", "test")] == [cfg.roco_train, cfg.roco_valid, cfg.roco_test]
    assert c["flickr30k"]["train"]["bad"] == c["roco"]["train"]["bad"] == n
    assert len(summary["bad_rows"]) == 4 * n
    # Files on disk: every good entry is one image, every bad one except the missing file is a file.
    good = sum(s["good"] for d in c.values() for s in d.values())
    jpgs = list(root.rglob("*.jpg"))
    assert len(jpgs) == good + 4 * (n - cfg.bad_rows_per_kind)
    assert len(scenes(root)) == good
    json.dumps(summary)  # the summary is plain JSON


def test_sizes_and_aspect_ratios_vary(demo):
    cfg, root, summary = demo
    sizes = [(r["width"], r["height"]) for r in scenes(root).values()]
    assert all(cfg.min_side <= s <= cfg.max_side for wh in sizes for s in wh)
    ratios = [w / h for w, h in sizes]
    assert min(ratios) < 0.8 and max(ratios) > 1.25
    assert len(set(sizes)) > len(sizes) // 2
    for rel, rec in list(scenes(root).items())[::7]:
        with Image.open(root / rel) as im:
            assert im.size == (rec["width"], rec["height"])


def test_the_demo_presets_sizes_are_generated(tmp_path):
    cfg = make_cfg()
    summary = generate_demo(cfg, tmp_path)
    assert summary["counts"]["cc12m"]["all"]["good"] == cfg.cc12m_rows


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError, match=r"key 'data.demo.max_side': value 50 is not allowed; allowed: an integer >= 100"):
        make_cfg(min_side=100, max_side=50)
    with pytest.raises(ConfigError, match=r"key 'data.demo.roco_train': value -1"):
        make_cfg(roco_train=-1)


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


def test_cc12m_tsv_has_no_header_and_two_columns(demo):
    cfg, root, summary = demo
    rows = read_tsv(root)
    assert len(rows) == summary["counts"]["cc12m"]["all"]["entries"]
    assert all(len(r) == 2 and r[1] for r in rows)
    assert rows[0][0].startswith("images/")  # no header line
    bad = bad_paths(summary)
    for url, _ in rows:
        path = url_path(url, root / "cc12m")
        assert path.parent == root / "cc12m/images"
        if str(path.relative_to(root)) not in bad:
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.mode == "RGB"


def test_mscoco_json_like_the_real_files(demo):
    cfg, root, summary = demo
    all_ids = []
    for split in ("train", "val"):
        doc = json.loads((root / f"mscoco/annotations/captions_{split}2017.json").read_text())
        assert list(doc) == ["info", "licenses", "images", "annotations"]
        assert {"description", "url", "version", "year", "contributor", "date_created"} <= set(doc["info"])
        assert all(set(lic) == {"url", "id", "name"} for lic in doc["licenses"])
        for im in doc["images"]:
            assert list(im) == ["license", "file_name", "coco_url", "height", "width", "date_captured",
                                "flickr_url", "id"]
            assert re.fullmatch(r"\d{12}\.jpg", im["file_name"]) and int(im["file_name"][:12]) == im["id"]
            assert url_path(im["coco_url"], root / "mscoco") == root / f"mscoco/{split}2017" / im["file_name"]
            assert all(isinstance(im[k], int) for k in ("license", "height", "width", "id"))
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", im["date_captured"])
        per_image: dict[int, list[str]] = {}
        for ann in doc["annotations"]:
            assert list(ann) == ["image_id", "id", "caption"] and isinstance(ann["caption"], str)
            per_image.setdefault(ann["image_id"], []).append(ann["caption"])
        assert set(per_image) == {im["id"] for im in doc["images"]}
        for captions in per_image.values():
            assert len(captions) == cfg.captions_per_image
            assert len(set(captions)) == len(captions)  # five annotators, five phrasings
        assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
        all_ids += [im["id"] for im in doc["images"]]
        assert len(doc["images"]) == summary["counts"]["mscoco"][split]["entries"]
    assert len(set(all_ids)) == len(all_ids)


def test_flickr30k_karpathy_json(demo):
    cfg, root, summary = demo
    doc = json.loads((root / "flickr30k/dataset_flickr30k.json").read_text())
    assert doc["dataset"] == "flickr30k" and list(doc) == ["images", "dataset"]
    splits = [im["split"] for im in doc["images"]]
    for split in ("train", "val", "test"):
        assert splits.count(split) == summary["counts"]["flickr30k"][split]["entries"]
    assert [im["imgid"] for im in doc["images"]] == list(range(len(doc["images"])))
    sentids = []
    for im in doc["images"]:
        assert set(im) == {"sentids", "imgid", "sentences", "split", "filename"}
        assert re.fullmatch(r"\d+\.jpg", im["filename"])
        assert len(im["sentences"]) == cfg.captions_per_image
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for s in im["sentences"]:
            assert set(s) == {"tokens", "raw", "imgid", "sentid"} and s["imgid"] == im["imgid"]
            assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
            assert all(t == t.lower() and t.isalnum() for t in s["tokens"])
        sentids += im["sentids"]
    assert len(set(sentids)) == len(sentids)
    images = root / "flickr30k/flickr30k-images"
    bad = bad_paths(summary)
    assert all((images / im["filename"]).is_file() for im in doc["images"]
               if f"flickr30k/flickr30k-images/{im['filename']}" not in bad)


def test_roco_csv_and_grayscale_images(demo):
    cfg, root, summary = demo
    bad = bad_paths(summary)
    for split in ("train", "valid", "test"):
        header = (root / f"roco/{split}_captions.csv").read_text().splitlines()[0]
        assert header == "ID,Caption"
        rows = read_roco(root, split)
        assert len(rows) == summary["counts"]["roco"][split]["entries"]
        for row in rows:
            assert re.fullmatch(rf"ROCOv2_2023_{split}_\d{{6}}", row["ID"])
            assert re.search(r"\b(CT|MR|X-ray)\b", row["Caption"]) and row["Caption"].endswith(".")
            rel = f"roco/{split}/{row['ID']}.jpg"
            if rel in bad:
                continue
            with Image.open(root / rel) as im:
                assert im.mode == "L"
                arr = np.asarray(im, dtype=np.float32)
            border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
            assert border.mean() < 50 and arr.max() > 150  # dark background, bright body outline
    captions = [r["Caption"] for s in ("train", "valid", "test") for r in read_roco(root, s)]
    assert any("," in c for c in captions)  # quoted captions with commas survive the round trip
    assert '"' in (root / "roco/train_captions.csv").read_text()


# --------------------------------------------------------------------------------------------
# Captions say what the images show
# --------------------------------------------------------------------------------------------


def assert_caption_matches(caption: str, scene: dict) -> None:
    text = caption.lower()
    for o in scene["objects"]:
        assert re.search(rf"\b{o['color']} {o['shape']}\b", text), (caption, scene)
    words = set(karpathy_tokens(text))
    drawn = {o["shape"] for o in scene["objects"]}
    assert words & set(SHAPES) <= drawn, (caption, scene)


def test_captions_name_the_drawn_shapes_and_colours(demo):
    cfg, root, summary = demo
    truth = scenes(root)
    checked = 0
    for url, caption in read_tsv(root):
        rel = str(url_path(url, root / "cc12m").relative_to(root))
        if rel in truth:
            assert_caption_matches(caption, truth[rel])
            checked += 1
    for split in ("train", "val"):
        doc = json.loads((root / f"mscoco/annotations/captions_{split}2017.json").read_text())
        names = {im["id"]: im["file_name"] for im in doc["images"]}
        for ann in doc["annotations"]:
            rel = f"mscoco/{split}2017/{names[ann['image_id']]}"
            if rel in truth:
                assert_caption_matches(ann["caption"], truth[rel])
                checked += 1
    for im in json.loads((root / "flickr30k/dataset_flickr30k.json").read_text())["images"]:
        rel = f"flickr30k/flickr30k-images/{im['filename']}"
        for s in im["sentences"] if rel in truth else []:
            assert_caption_matches(s["raw"], truth[rel])
            checked += 1
    assert checked > 100


def test_drawn_pixels_match_the_scene(demo):
    cfg, root, summary = demo
    for rel, rec in scenes(root).items():
        if rec["kind"] != "shapes":
            continue
        arr = np.asarray(Image.open(root / rel).convert("RGB"), dtype=np.int32)
        for o in rec["objects"]:
            x, y = o["anchor"]
            assert np.abs(arr[y, x] - COLORS[o["color"]]).max() < 60, (rel, o)
        centers = [o["center"][0 if rec["layout"] == "horizontal" else 1] for o in rec["objects"]]
        assert centers == sorted(centers)  # reading order: left to right or top to bottom


def test_scene_relations_and_caption_variety():
    rnd = random.Random(3)
    for _ in range(200):
        scene = make_scene(rnd, rnd.randint(48, 160), rnd.randint(48, 160))
        captions = scene_captions(scene, rnd, 5)
        assert len(set(captions)) == 5
        objs = scene.objects
        assert 1 <= len(objs) <= 3
        for cap in captions:
            assert_caption_matches(cap, {"objects": [o.__dict__ for o in objs]})
            for i, j in ((0, 1), (1, 2)):
                if j >= len(objs):
                    continue
                a, b = (f"{o.color} {o.shape}" for o in (objs[i], objs[j]))
                # "X to the left of Y" / "X above Y" only ever put X first in reading order
                for rel in ("to the left of", "above"):
                    assert not re.search(rf"{b} {rel} \w+ \w* ?{a}", cap), cap
        img = draw_scene(scene)
        assert img.size == (scene.width, scene.height)


def test_scan_captions_match_the_lesions():
    rnd = random.Random(5)
    for _ in range(60):
        scan = make_scan(rnd, rnd.randint(48, 160), rnd.randint(48, 160))
        caption = scan_caption(scan, rnd)
        arr = np.asarray(draw_scan(scan), dtype=np.float32)
        assert caption.lower().count("lesion") >= len(scan.lesions)
        if not scan.lesions:
            assert "no focal lesion" in caption
        for les in scan.lesions:
            assert f"{les.side} {les.level} region" in caption
            x, y = les.center
            assert (x > scan.width / 2) == (les.side == "left")  # the patient's left is the image's right
            assert (y < scan.height / 2) == (les.level == "upper")
            patch = arr[y - 1 : y + 2, x - 1 : x + 2].mean()
            assert patch > 150 if les.brightness == "bright" else patch < 60, (les, patch)


def test_vocabulary_is_small(demo):
    cfg, root, summary = demo
    words = set()
    for _, caption in read_tsv(root):
        words |= set(karpathy_tokens(caption))
    for im in json.loads((root / "flickr30k/dataset_flickr30k.json").read_text())["images"]:
        for s in im["sentences"]:
            words |= set(s["tokens"])
    for split in ("train", "valid", "test"):
        for row in read_roco(root, split):
            words |= set(karpathy_tokens(row["Caption"]))
    assert len(words) < 300


# --------------------------------------------------------------------------------------------
# Planted failures
# --------------------------------------------------------------------------------------------


def test_planted_bad_rows_fail_to_decode(demo):
    cfg, root, summary = demo
    seen = {(b["dataset"], b["kind"]) for b in summary["bad_rows"]}
    assert seen == {(d, k) for d in ("cc12m", "mscoco", "flickr30k", "roco") for k in BAD_KINDS}
    for bad in summary["bad_rows"]:
        path = root / bad["path"]
        assert url_path(bad["url"], root / bad["dataset"]) == path
        if bad["kind"] == "missing_file":
            assert not path.exists()
            continue
        data = path.read_bytes()
        if bad["kind"] == "truncated_jpeg":
            assert data[:2] == b"\xff\xd8" and 100 <= len(data) <= 200  # starts like a JPEG, then stops
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None, bad
        with pytest.raises(Exception):
            with Image.open(path) as im:
                im.load()


def test_planted_bad_rows_are_listed_in_their_datasets(demo):
    cfg, root, summary = demo
    by_dataset: dict[str, list] = {}
    for bad in summary["bad_rows"]:
        by_dataset.setdefault(bad["dataset"], []).append(bad)
    urls = {url for url, _ in read_tsv(root)}
    assert all(b["key"] in urls for b in by_dataset["cc12m"])
    coco = json.loads((root / "mscoco/annotations/captions_train2017.json").read_text())
    annotated = {a["image_id"] for a in coco["annotations"]}
    coco_ids = {im["id"] for im in coco["images"]}
    assert all(b["key"] in coco_ids and b["key"] in annotated and b["split"] == "train" for b in by_dataset["mscoco"])
    flickr = json.loads((root / "flickr30k/dataset_flickr30k.json").read_text())["images"]
    train_files = {im["filename"] for im in flickr if im["split"] == "train"}
    assert all(b["key"] in train_files for b in by_dataset["flickr30k"])
    roco_ids = {r["ID"] for r in read_roco(root, "train")}
    assert all(b["key"] in roco_ids and b["split"] == "train" for b in by_dataset["roco"])


def test_classification_set_is_imagenet_layout_with_one_named_shape_per_image(demo):
    from pipeline.data.classify import read_classification_set

    cfg, root, summary = demo
    data = read_classification_set(root / "classify", None, root / "classify/classnames.txt")
    assert len(data.class_names) == cfg.classify_classes == summary["counts"]["classify"]["all"]["classes"]
    assert len(data.paths) == cfg.classify_classes * cfg.classify_images_per_class
    scenes = {r["path"]: r for r in map(json.loads, (root / "scenes.jsonl").read_text().splitlines())}
    for path, label in zip(data.paths, data.labels):
        (shape,) = scenes[str(path.relative_to(root))]["objects"]
        assert data.class_names[label] == f"{shape['color']} {shape['shape']}"


def test_karpathy_coco_test_split_reads(demo):
    from pipeline.data.sources import read_karpathy_split

    cfg, root, summary = demo
    test = read_karpathy_split(root / "mscoco/dataset_coco.json", root / "mscoco")
    assert len(test.paths) == cfg.mscoco_karpathy_test_images == summary["counts"]["mscoco_karpathy"]["test"]["good"]
    assert all(p.parent.name == "val2014" and p.name.startswith("COCO_val2014_") for p in test.paths)
    assert all(len(c) == cfg.captions_per_image for c in test.captions)
    flickr = read_karpathy_split(root / "flickr30k/dataset_flickr30k.json", root / "flickr30k/flickr30k-images")
    assert len(flickr.paths) == cfg.flickr30k_test_images
