"""Each dataset's release format, parsed from small files written here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import SourcesConfig
from pipeline.data.sources import (
    COLUMNS,
    SourceError,
    cc12m_tsv_chunks,
    read_cc12m_tsv,
    read_coco_captions,
    read_karpathy_flickr30k,
    read_roco,
    read_source,
    url_id,
)


# The benchmark stage's keys (not read by read_source): any non-empty paths.
BENCHMARK_SOURCES = dict(coco_karpathy_json="dataset_coco.json", coco_images="mscoco", imagenet_val="val",
                         imagenet_classes="classes.txt")


def check_frame(df):
    assert list(df.columns) == COLUMNS
    for column in COLUMNS:
        assert all(isinstance(v, str) for v in df[column]), column
    for caption, captions in zip(df["caption"], df["captions"]):
        assert json.loads(captions)[0] == caption


# --------------------------------------------------------------------------------------------
# CC12M
# --------------------------------------------------------------------------------------------


def test_cc12m_reads_url_caption_lines(tmp_path):
    path = tmp_path / "cc12m.tsv"
    path.write_text(
        "https://a.example/1.jpg\ta <PERSON> on a bike\r\n"
        "\n"
        "http://b.example/x?y=1\t  spaced   caption \n"
        "https://a.example/1.jpg\tsame url, another caption\n"
    )
    df = read_cc12m_tsv(path)
    check_frame(df)
    assert df["url"].tolist() == ["https://a.example/1.jpg", "http://b.example/x?y=1", "https://a.example/1.jpg"]
    assert df["caption"].tolist() == ["a <PERSON> on a bike", "spaced caption", "same url, another caption"]
    assert df["image_id"].tolist() == [url_id(u) for u in df["url"]]
    assert df["image_id"][0] == df["image_id"][2] != df["image_id"][1]
    assert set(df["split"]) == {""}


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ("https://a.example/2.jpg no tab here", "no tab"),
        ("\ta caption", "empty url"),
        ("https://a.example/2.jpg\ta\tcaption", "2 tabs"),
        ("https://a.example/2.jpg\t   ", "empty caption"),
        ("not a url\ta caption", "is not a URL"),
    ],
)
def test_cc12m_malformed_line_names_file_and_line(tmp_path, bad_line, problem):
    path = tmp_path / "cc12m.tsv"
    path.write_text(f"https://a.example/1.jpg\tgood\n\n{bad_line}\nhttps://a.example/3.jpg\tgood\n")
    with pytest.raises(SourceError, match=problem) as e:
        read_cc12m_tsv(path)
    assert f"{path}: line 3:" in str(e.value)


def test_cc12m_streams_in_chunks_with_the_rows_and_refusals_of_the_whole(tmp_path):
    """The download stage reads CC12M a chunk at a time: the chunks are the whole list cut up, the
    refused rows are counted as they pass, and a bad line is found when its chunk is read."""
    (tmp_path / "local.jpg").write_bytes(b"x")
    lines = [f"https://a.example/{i}.jpg\tcaption {i}" for i in range(7)]
    lines[2], lines[5] = "ftp://a.example/x.jpg\tftp", "local.jpg\tlocal"
    path = tmp_path / "cc12m.tsv"
    path.write_text("\n".join(lines) + "\n")
    refused = Counter()
    chunks = list(cc12m_tsv_chunks(path, refused, chunk_rows=3))
    assert [len(chunk) for chunk in chunks] == [2, 3, 1]  # 3 lines each, less the refused ftp:// row
    assert pd.concat(chunks, ignore_index=True).equals(read_cc12m_tsv(path))
    assert refused == {"scheme ftp: not http, https or file": 1} == read_cc12m_tsv(path).attrs["refused"]
    path.write_text("\n".join([*lines[:4], "no tab", *lines[4:]]) + "\n")
    stream = cc12m_tsv_chunks(path, Counter(), chunk_rows=3)
    assert len(next(stream)) == 2
    with pytest.raises(SourceError, match="line 5: no tab"):
        next(stream)


def test_cc12m_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(SourceError, match="storage.googleapis.com/conceptual_12m/cc12m.tsv"):
        read_cc12m_tsv(tmp_path / "nope.tsv")


# --------------------------------------------------------------------------------------------
# MSCOCO
# --------------------------------------------------------------------------------------------


def coco_json(images, annotations):
    return {
        "info": {},
        "licenses": [],
        "images": [
            {
                "id": i,
                "file_name": f"{i:012d}.jpg",
                "coco_url": f"http://images.cocodataset.org/{split}2017/{i:012d}.jpg",
                "height": 10,
                "width": 20,
                "license": 1,
            }
            for i, split in images
        ],
        "annotations": [{"image_id": i, "id": a, "caption": c} for i, a, c in annotations],
    }


def write_coco(root: Path, train=None, val=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    train = train or coco_json(
        [(9, "train"), (25, "train"), (30, "train")],
        [(25, 7, "second caption.\n"), (25, 3, "First caption."), (9, 1, "A cat. "), (9, 2, "Another cat")],
    )
    val = val or coco_json([(139, "val")], [(139, 5, "A room.")])
    (root / "captions_train2017.json").write_text(json.dumps(train))
    (root / "captions_val2017.json").write_text(json.dumps(val))
    return root


def test_coco_one_row_per_image_captions_in_annotation_order(tmp_path):
    df = read_coco_captions(write_coco(tmp_path / "annotations"))
    check_frame(df)
    assert df["image_id"].tolist() == ["9", "25", "139"]  # 30 has no caption
    assert df.attrs["dropped_without_captions"] == 1
    assert df["split"].tolist() == ["train", "train", "val"]
    assert json.loads(df["captions"][1]) == ["First caption.", "second caption."]
    assert df["caption"][0] == "A cat."
    assert df["url"][2] == "http://images.cocodataset.org/val2017/000000000139.jpg"


def test_coco_malformed_json_names_file_and_line(tmp_path):
    root = write_coco(tmp_path / "annotations")
    (root / "captions_val2017.json").write_text('{"images": [\n  {"id": 1,\n  "coco_url": }\n]}')
    with pytest.raises(SourceError, match=r"captions_val2017.json: line 3 column \d+: not valid JSON"):
        read_coco_captions(root)


def test_coco_missing_key_names_json_path(tmp_path):
    bad = coco_json([(1, "train"), (2, "train")], [(1, 1, "x")])
    del bad["images"][1]["coco_url"]
    root = write_coco(tmp_path / "annotations", train=bad)
    with pytest.raises(SourceError, match=r"captions_train2017.json: images\[1\]: missing key 'coco_url'"):
        read_coco_captions(root)
    bad = coco_json([(1, "train")], [(1, 1, "x")])
    del bad["annotations"][0]["caption"]
    root = write_coco(tmp_path / "annotations", train=bad)
    with pytest.raises(SourceError, match=r"annotations\[0\]: missing key 'caption'"):
        read_coco_captions(root)


def test_coco_annotation_of_unknown_image(tmp_path):
    bad = coco_json([(1, "train")], [(1, 1, "x"), (99, 2, "orphan")])
    root = write_coco(tmp_path / "annotations", train=bad)
    with pytest.raises(SourceError, match=r"annotations\[1\] \(id 2\): image_id 99 is not in 'images'"):
        read_coco_captions(root)


def test_coco_missing_file_says_where_to_get_it(tmp_path):
    root = write_coco(tmp_path / "annotations")
    (root / "captions_val2017.json").unlink()
    with pytest.raises(SourceError, match="captions_val2017.json.*annotations_trainval2017.zip"):
        read_coco_captions(root)


# --------------------------------------------------------------------------------------------
# Flickr30K (Karpathy split)
# --------------------------------------------------------------------------------------------


def write_karpathy(tmp_path: Path, images=None) -> tuple[Path, Path]:
    images_dir = tmp_path / "flickr30k-images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images = images or [
        {
            "filename": f"{1000 + i}.jpg",
            "imgid": i,
            "split": split,
            "sentids": [5 * i + j for j in range(5)],
            "sentences": [
                {"raw": f"Caption {j} of image {i}.", "tokens": ["caption"], "imgid": i, "sentid": 5 * i + j}
                for j in range(5)
            ],
        }
        for i, split in enumerate(["train", "train", "val", "test"])
    ]
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path, images_dir


def test_flickr30k_keeps_all_splits_with_file_urls(tmp_path):
    path, images_dir = write_karpathy(tmp_path)
    df = read_karpathy_flickr30k(path, images_dir)
    check_frame(df)
    assert df["split"].tolist() == ["train", "train", "val", "test"]
    assert df["image_id"].tolist() == ["1000", "1001", "1002", "1003"]
    assert df["url"][2] == (images_dir.resolve() / "1002.jpg").as_uri()
    assert df["url"][2].startswith("file:///")
    assert json.loads(df["captions"][3]) == [f"Caption {j} of image 3." for j in range(5)]


def test_flickr30k_missing_key_and_missing_images(tmp_path):
    path, images_dir = write_karpathy(tmp_path, images=[{"filename": "1.jpg", "imgid": 0, "split": "train"}])
    with pytest.raises(SourceError, match=r"dataset_flickr30k.json: images\[0\]: missing key 'sentences'"):
        read_karpathy_flickr30k(path, images_dir)
    with pytest.raises(SourceError, match="shannon.cs.illinois.edu/DenotationGraph"):
        read_karpathy_flickr30k(path, tmp_path / "no-images")
    with pytest.raises(SourceError, match="caption_datasets.zip"):
        read_karpathy_flickr30k(tmp_path / "no.json", images_dir)


# --------------------------------------------------------------------------------------------
# ROCO v2
# --------------------------------------------------------------------------------------------


def write_roco(root: Path) -> Path:
    for split in ("train", "valid", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}_captions.csv").write_text(
            "ID,Caption\n"
            f"ROCOv2_2023_{split}_000001,Head CT demonstrating left parotiditis.\n"
            f'ROCOv2_2023_{split}_000002,"Chest X-ray, PA view: ""opacity""\nin the right lobe."\n'
        )
    return root


def test_roco_reads_three_splits(tmp_path):
    root = write_roco(tmp_path / "roco")
    df = read_roco(root)
    check_frame(df)
    assert df["split"].tolist() == ["train", "train", "valid", "valid", "test", "test"]
    assert df["image_id"][3] == "ROCOv2_2023_valid_000002"
    assert df["caption"][3] == 'Chest X-ray, PA view: "opacity" in the right lobe.'
    assert df["url"][0] == (root.resolve() / "train" / "ROCOv2_2023_train_000001.jpg").as_uri()


def test_roco_wrong_header(tmp_path):
    root = write_roco(tmp_path / "roco")
    (root / "valid_captions.csv").write_text("id,caption\nx,y\n")
    with pytest.raises(SourceError, match=r"valid_captions.csv: line 1: header is \['id', 'caption'\]"):
        read_roco(root)


@pytest.mark.parametrize(
    "bad_row, problem",
    [
        ("ROCOv2_2023_test_000003,one,two", "3 fields"),
        ('ROCOv2_2023_test_000003,"open "quote', "malformed CSV"),
        (",caption without id", "bad ID"),
        ("ROCOv2_2023_test_000003,", "empty caption"),
    ],
)
def test_roco_malformed_row_names_file_and_line(tmp_path, bad_row, problem):
    root = write_roco(tmp_path / "roco")
    # line 2 is a caption that spans lines 2-3; the bad row is line 4
    (root / "test_captions.csv").write_text(f'ID,Caption\nA,"two\nlines"\n{bad_row}\nB,fine\n')
    with pytest.raises(SourceError, match=problem) as e:
        read_roco(root)
    assert "test_captions.csv: line 4:" in str(e.value)


# --------------------------------------------------------------------------------------------
# read_source
# --------------------------------------------------------------------------------------------


def test_read_source_dispatches(tmp_path):
    (tmp_path / "cc12m.tsv").write_text("https://a.example/1.jpg\tone\n")
    flickr_json, flickr_images = write_karpathy(tmp_path / "flickr30k")
    cfg = SourcesConfig(
        cc12m_tsv=str(tmp_path / "cc12m.tsv"),
        mscoco_annotations=str(write_coco(tmp_path / "annotations")),
        flickr30k_json=str(flickr_json),
        flickr30k_images=str(flickr_images),
        roco_root=str(write_roco(tmp_path / "roco")),
        **BENCHMARK_SOURCES,
    )
    sizes = {name: len(read_source(name, cfg)) for name in ("cc12m", "mscoco", "flickr30k", "roco")}
    assert sizes == {"cc12m": 1, "mscoco": 3, "flickr30k": 4, "roco": 6}
    with pytest.raises(SourceError, match="unknown dataset 'imagenet'"):
        read_source("imagenet", cfg)


@pytest.mark.parametrize(
    "dataset, key, where",
    [
        ("cc12m", "cc12m_tsv", "https://storage.googleapis.com/conceptual_12m/cc12m.tsv"),
        ("mscoco", "mscoco_annotations", "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"),
        ("flickr30k", "flickr30k_json", "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"),
        ("flickr30k", "flickr30k_images", "https://shannon.cs.illinois.edu/DenotationGraph/"),
        ("roco", "roco_root", "https://zenodo.org/records/10821435"),
    ],
)
def test_read_source_missing_path_names_key_and_where_to_obtain(tmp_path, dataset, key, where):
    flickr_json, flickr_images = write_karpathy(tmp_path / "flickr30k")
    cfg = SourcesConfig(cc12m_tsv=str(tmp_path / "cc12m.tsv"), mscoco_annotations=str(tmp_path / "annotations"),
                        flickr30k_json=str(flickr_json), flickr30k_images=str(flickr_images),
                        roco_root=str(tmp_path / "roco"), **BENCHMARK_SOURCES)
    setattr(cfg, key, str(tmp_path / "missing"))
    with pytest.raises(SourceError) as e:
        read_source(dataset, cfg)
    message = str(e.value)
    assert f"'data.sources.{key}'" in message and where in message and str(tmp_path / "missing") in message


@pytest.mark.parametrize("value", ["training", "VAL", ""])
def test_flickr30k_unknown_split_names_file_image_and_value(tmp_path, value):
    """A misspelt split once dropped the image silently (no split of ours took it)."""
    path, images_dir = write_karpathy(tmp_path)
    data = json.loads(path.read_text())
    data["images"][2]["split"] = value
    path.write_text(json.dumps(data))
    with pytest.raises(SourceError, match=rf"dataset_flickr30k.json: images\[2\] \(1002.jpg\): split {value!r} is "
                                          r"not one of Karpathy's train, val, test, restval"):
        read_karpathy_flickr30k(path, images_dir)


def test_cc12m_byte_order_mark_is_not_part_of_the_first_url(tmp_path):
    path = tmp_path / "cc12m.tsv"
    path.write_bytes("\ufeffhttps://a.example/1.jpg\tfirst caption\nhttps://b.example/2.jpg\tsecond\n".encode())
    df = read_cc12m_tsv(path)
    assert df["url"].tolist() == ["https://a.example/1.jpg", "https://b.example/2.jpg"]


def test_flickr30k_paths_out_of_the_image_folder_are_refused_and_counted(tmp_path):
    """A filename of ../../x.jpg, an absolute path or a symlink out once pulled any readable image into
    the shards. Such rows are counted by reason and never fetched."""
    secret = tmp_path / "outside/secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(b"private")
    path, images_dir = write_karpathy(tmp_path)
    (images_dir / "link.jpg").symlink_to(secret)
    data = json.loads(path.read_text())
    for image, name in zip(data["images"], ["../outside/secret.jpg", str(secret), "link.jpg"]):
        image["filename"] = name
    path.write_text(json.dumps(data))
    df = read_karpathy_flickr30k(path, images_dir)
    assert df["image_id"].tolist() == ["1003"]  # the one row with a file inside the folder
    assert df.attrs["refused"] == {"local file outside the dataset folder": 3}


def test_coco_urls_are_web_urls_or_files_beside_the_annotations(tmp_path):
    root = tmp_path / "mscoco"
    inside = root / "val2017/000000000139.jpg"
    train = coco_json([(9, "train"), (25, "train")], [(9, 1, "A cat."), (25, 2, "A dog.")])
    train["images"][0]["coco_url"] = (tmp_path / "elsewhere/9.jpg").as_uri()
    train["images"][1]["coco_url"] = "ftp://example.org/25.jpg"
    val = coco_json([(139, "val")], [(139, 5, "A room.")])
    val["images"][0]["coco_url"] = inside.as_uri()
    df = read_coco_captions(write_coco(root / "annotations", train=train, val=val))
    assert df["image_id"].tolist() == ["139"]
    assert df.attrs["refused"] == {"local file outside the dataset folder": 1,
                                   "scheme ftp: not http, https or file": 1}


def test_cc12m_local_files_stay_in_the_lists_folder(tmp_path):
    path = tmp_path / "cc12m/cc12m.tsv"
    path.parent.mkdir()
    path.write_text(f"{(tmp_path / 'cc12m/images/1.jpg').as_uri()}\tinside\n"
                    f"{(tmp_path / 'cc12m/../other/2.jpg').as_uri()}\toutside\n"
                    "https://a.example/3.jpg\ton the web\n")
    df = read_cc12m_tsv(path)
    assert df["caption"].tolist() == ["inside", "on the web"]
    assert df.attrs["refused"] == {"local file outside the dataset folder": 1}


def _karpathy_coco(tmp_path, splits):
    images = []
    for i, split in enumerate(splits):
        folder = "train2014" if split == "train" else "val2014"
        name = f"COCO_{folder}_{i + 1:012d}.jpg"
        (tmp_path / folder).mkdir(exist_ok=True)
        if i != 5:  # image 5 is listed but its file is absent
            (tmp_path / folder / name).write_bytes(b"jpeg")
        images.append({"filepath": folder, "filename": name, "split": split, "cocoid": i + 1, "imgid": i,
                       "sentences": [{"raw": f"caption {i} {j} ", "tokens": []} for j in range(2)]})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_karpathy_split_selects_its_split_only(tmp_path):
    from pipeline.data.sources import read_karpathy_split

    path = _karpathy_coco(tmp_path, ["train", "test", "val", "restval", "test", "test", "test"])
    test = read_karpathy_split(path, tmp_path)
    assert test.image_ids == ["2", "5", "7"] and test.missing == 1  # cocoid 6 has no file
    assert [p.relative_to(tmp_path).as_posix() for p in test.paths] == [
        "val2014/COCO_val2014_000000000002.jpg", "val2014/COCO_val2014_000000000005.jpg",
        "val2014/COCO_val2014_000000000007.jpg"]
    assert test.captions[0] == ["caption 1 0", "caption 1 1"]
    assert read_karpathy_split(path, tmp_path, "val").image_ids == ["3"]
    assert read_karpathy_split(path, tmp_path, "train").paths[0].parent.name == "train2014"


def test_karpathy_split_errors_name_the_entry(tmp_path):
    from pipeline.data.sources import read_karpathy_split

    path = _karpathy_coco(tmp_path, ["test", "dev"])
    with pytest.raises(SourceError, match=r"dataset_coco.json: images\[1\] .*split 'dev'"):
        read_karpathy_split(path, tmp_path)
    with pytest.raises(SourceError, match=r"not found.*caption_datasets.zip"):
        read_karpathy_split(tmp_path / "nowhere" / "dataset_coco.json", tmp_path)
    only_train = _karpathy_coco(tmp_path, ["train"])
    with pytest.raises(SourceError, match=r"no test image found"):
        read_karpathy_split(only_train, tmp_path)


def test_cc12m_paths_without_a_scheme_are_relative_to_the_lists_folder(tmp_path):
    """The demo's lists name their images so: the same file reads the same wherever its folder lives."""
    ids = {}
    for place in ("a", "b"):
        path = tmp_path / place / "cc12m/cc12m.tsv"
        path.parent.mkdir(parents=True)
        path.write_text("images/1.jpg\tinside\nimages/a%20b.jpg\tquoted\n../other/2.jpg\toutside\n/etc/3.jpg\tabsolute\n")
        df = read_cc12m_tsv(path)
        assert df["url"].tolist() == [(path.parent.resolve() / "images/1.jpg").as_uri(),
                                      (path.parent.resolve() / "images/a b.jpg").as_uri()]
        assert df.attrs["refused"] == {"local file outside the dataset folder": 2}
        ids[place] = df["image_id"].tolist()
    assert ids["a"] == ids["b"]  # the id hashes the URL as written, not where the checkout lives


def test_coco_urls_without_a_scheme_are_relative_to_the_folder_above_the_annotations(tmp_path):
    root = tmp_path / "mscoco"
    train = coco_json([(9, "train"), (25, "train")], [(9, 1, "A cat."), (25, 2, "A dog.")])
    train["images"][0]["coco_url"] = "train2017/000000000009.jpg"
    train["images"][1]["coco_url"] = "../elsewhere/25.jpg"
    val = coco_json([(139, "val")], [(139, 5, "A room.")])
    df = read_coco_captions(write_coco(root / "annotations", train=train, val=val))
    assert df["url"].tolist()[0] == (root.resolve() / "train2017/000000000009.jpg").as_uri()
    assert df["image_id"].tolist() == ["9", "139"]
    assert df.attrs["refused"] == {"local file outside the dataset folder": 1}
