"""ImageNet's released layouts (pipeline/data/classify.py): folder per synset, flat + LOC_val_solution.csv,
flat + the devkit's ground truth with meta.mat; malformed lines are named by file and line."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline.data.classify import read_class_names, read_classification_set, split_per_class
from pipeline.data.sources import SourceError

SYNSETS = ("n01440764", "n01443537", "n02119789")  # tench, goldfish, kit fox: sorted = class index
NAMES = "tench\ngoldfish\nkit fox\n"


def _jpeg(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), (value, value, value)).save(path, format="JPEG")


@pytest.fixture
def names(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# ImageNet order\n" + NAMES)
    return path


def test_folder_per_synset_gives_sorted_synset_indices(tmp_path, names):
    root = tmp_path / "val"
    for i, synset in enumerate(reversed(SYNSETS)):  # created out of order: the index is the sorted one
        for j in range(2):
            _jpeg(root / synset / f"ILSVRC2012_val_0000000{i * 2 + j + 1}.JPEG", 40 * i)
    data = read_classification_set(root, None, names)
    assert data.layout == "folders" and data.class_names == ["tench", "goldfish", "kit fox"]
    by_synset = {p.parent.name: label for p, label in zip(data.paths, data.labels)}
    assert by_synset == {s: i for i, s in enumerate(SYNSETS)}
    assert len(data.paths) == 6


def test_class_count_must_match_the_names_file(tmp_path, names):
    for synset in SYNSETS[:2]:
        _jpeg(tmp_path / "val" / synset / "a.JPEG", 0)
    with pytest.raises(SourceError, match=r"2 classes, but .*classes.txt names 3"):
        read_classification_set(tmp_path / "val", None, names)


def _flat(tmp_path, count=4):
    root = tmp_path / "flat"
    for i in range(1, count + 1):
        _jpeg(root / f"ILSVRC2012_val_{i:08d}.JPEG", 10 * i)
    return root


def test_flat_folder_with_loc_val_solution_csv(tmp_path, names):
    root = _flat(tmp_path, 3)  # image 4 is listed but absent: a partial copy
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n"
                   "ILSVRC2012_val_00000003,n02119789 1 2 3 4 n02119789 5 6 7 8 \n"
                   "ILSVRC2012_val_00000001,n01443537 1 2 3 4 \n"
                   "ILSVRC2012_val_00000002,n01440764 1 2 3 4 \n"
                   "ILSVRC2012_val_00000004,n01440764 1 2 3 4 \n")
    data = read_classification_set(root, csv, names)
    assert data.layout == "loc_csv" and data.missing == 1
    assert [p.name for p in data.paths] == [f"ILSVRC2012_val_0000000{i}.JPEG" for i in (1, 2, 3)]
    assert data.labels == [1, 0, 2]


def test_malformed_loc_csv_line_names_file_and_line(tmp_path, names):
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01443537 1 2 3 4\n"
                   "ILSVRC2012_val_00000002,goldfish 1 2 3 4\n")
    with pytest.raises(SourceError, match=r"LOC_val_solution.csv: line 3: expected"):
        read_classification_set(_flat(tmp_path), csv, names)


def _devkit(tmp_path, lines):
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O"),
              ("children", "O"), ("wordnet_height", "O"), ("num_train_images", "O")]
    # The devkit's own id order is not the sorted synset order (id 1 is n02119789, kit fox); id 4 is
    # an inner node of the hierarchy, which is no class.
    rows = [(1, "n02119789", "kit fox", "", 0, np.array([]), 0, 1300), (2, "n01440764", "tench", "", 0, np.array([]), 0, 1300),
            (3, "n01443537", "goldfish", "", 0, np.array([]), 0, 1300), (4, "n00015388", "animal", "", 3, np.array([1, 2, 3]), 5, 0)]
    scipy.io.savemat(data / "meta.mat", {"synsets": np.array(rows, dtype=fields)})
    truth = data / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("".join(f"{x}\n" for x in lines))
    return truth


def test_flat_folder_with_devkit_ground_truth_maps_ids_through_meta_mat(tmp_path, names):
    truth = _devkit(tmp_path, [1, 3, 2, 2])
    data = read_classification_set(_flat(tmp_path), truth, names)
    assert data.layout == "ground_truth_txt" and data.missing == 0
    assert data.labels == [2, 1, 0, 0]  # kit fox, goldfish, tench, tench in sorted-synset indices


@pytest.mark.parametrize("bad, message", [("7x", r"line 2: '7x' is not a class id"),
                                          ("4", r"line 2: class id 4 is not a leaf class")])
def test_malformed_ground_truth_line_names_file_and_line(tmp_path, names, bad, message):
    truth = _devkit(tmp_path, [1, bad, 2, 3])
    with pytest.raises(SourceError, match=rf"ILSVRC2012_validation_ground_truth.txt: {message}"):
        read_classification_set(_flat(tmp_path), truth, names)


def test_missing_images_folder_says_where_to_get_imagenet(tmp_path, names):
    with pytest.raises(SourceError, match=r"data.sources.imagenet_val'.*image-net.org"):
        read_classification_set(tmp_path / "nowhere", None, names)


def test_repeated_class_name_is_named_by_line(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("tench\ngoldfish\ntench\n")
    with pytest.raises(SourceError, match=r"names.txt: line 3: class name 'tench' repeats line 1"):
        read_class_names(path)


def test_split_per_class_spreads_the_test_share_over_each_class():
    labels = [0] * 10 + [1] * 4 + [2] * 2
    train, test = split_per_class(labels, 0.5)
    assert sorted(train + test) == list(range(16))
    assert [sum(labels[i] == c for i in test) for c in range(3)] == [5, 2, 1]
    assert split_per_class(labels, 0.5) == (train, test)  # deterministic
