"""Image-classification sets in ImageNet's released layouts, for zero-shot classification and the
linear probe (pipeline/evaluate/zeroshot.py, probe.py). Two layouts are read:

    folder per class   <root>/<class folder>/<image>       ImageNet's train layout, the val set as most
                                                           people sort it (valprep.sh), the demo's set
    flat + labels      <root>/ILSVRC2012_val_00000001.JPEG ... and one of
                       LOC_val_solution.csv                 Kaggle's: ImageId,PredictionString (a synset first)
                       ILSVRC2012_validation_ground_truth.txt  the devkit's: line i is the ILSVRC2012_ID of
                                                           image i (1-based); the devkit's meta.mat, in the
                                                           same folder, maps ids to synsets

Class index i is the i-th class folder or synset in sorted order (ImageNet's usual index, torchvision's
and the class-names file's order); the class-names file gives the i-th class's name, one per line.
The folder layout is read with torchvision's ImageFolder. torchvision's ImageNet class is not used: it
wants the devkit tarball and the original archives and rewrites the val folder, where this reads a copy
as it is and reports a malformed line by file and line number.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.sources import SourceError

WHERE_TO_OBTAIN = {
    "imagenet": "ImageNet-1k (ILSVRC2012) validation: register at https://image-net.org/download-images and take "
    "ILSVRC2012_img_val.tar with ILSVRC2012_devkit_t12.tar.gz (its data/ holds the ground truth and meta.mat), "
    "or Kaggle's imagenet-object-localization-challenge (ILSVRC/Data/CLS-LOC/val + LOC_val_solution.csv)",
}
VAL_IMAGE = re.compile(r"ILSVRC2012_val_\d{8}")
SYNSET = re.compile(r"n\d{8}")


@dataclass
class ClassificationSet:
    """Image files with their class index, and the classes' names (index order)."""

    paths: list[Path]
    labels: list[int]
    class_names: list[str]
    layout: str  # "folders", "loc_csv" or "ground_truth_txt"
    missing: int = 0  # images the labels list names but the folder lacks (a partial copy)

    def subset(self, indices: list[int]) -> ClassificationSet:
        return ClassificationSet([self.paths[i] for i in indices], [self.labels[i] for i in indices],
                                 self.class_names, self.layout)


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of a text file's lines, less blank lines and `#` comments."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            out.append((number, line.strip()))
    return out


def read_class_names(path: str | Path) -> list[str]:
    """One class name per line, in class-index order; a name may not appear twice."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"class names: {path} not found (one name per line, in class-index order)")
    names, seen = [], {}
    for number, name in read_lines(path):
        if name in seen:
            raise SourceError(f"{path}: line {number}: class name {name!r} repeats line {seen[name]}")
        seen[name] = number
        names.append(name)
    if not names:
        raise SourceError(f"{path}: no class names")
    return names


def _check_count(found: int, names: list[str], where: str, names_file: str | Path) -> None:
    if found != len(names):
        raise SourceError(f"{where}: {found} classes, but {names_file} names {len(names)}")


def read_image_folder(root: Path, class_names: list[str], names_file: str | Path) -> ClassificationSet:
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root), allow_empty=False)
    except (FileNotFoundError, OSError) as e:
        raise SourceError(f"{root}: not a folder of class folders with images: {e}") from None
    _check_count(len(folder.classes), class_names, f"{root}", names_file)
    return ClassificationSet([Path(p) for p, _ in folder.samples], [i for _, i in folder.samples],
                             class_names, "folders")


def _loc_csv_synsets(path: Path) -> dict[str, str]:
    """LOC_val_solution.csv -> {image id: synset} (the first synset of each PredictionString)."""
    out = {}
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["ImageId", "PredictionString"]:
            raise SourceError(f"{path}: line 1: header is {header!r}; expected ['ImageId', 'PredictionString']")
        for fields in reader:
            where = f"{path}: line {reader.line_num}"
            if not fields:
                continue
            words = fields[1].split() if len(fields) == 2 else []
            if len(fields) != 2 or not VAL_IMAGE.fullmatch(fields[0]) or not words or not SYNSET.fullmatch(words[0]):
                raise SourceError(f"{where}: expected 'ILSVRC2012_val_<8 digits>,n<8 digits> <box> ...', "
                                  f"got {','.join(fields)[:80]!r}")
            out[fields[0]] = words[0]
    return out


def _meta_synsets(meta: Path) -> dict[int, str]:
    """The devkit's data/meta.mat -> {ILSVRC2012_ID: synset} for the 1,000 leaf classes."""
    import scipy.io

    if not meta.is_file():
        raise SourceError(f"{meta}: not found; the devkit's ground truth needs its meta.mat beside it "
                          f"(ILSVRC2012_devkit_t12/data/); to obtain it, {WHERE_TO_OBTAIN['imagenet']}")
    try:
        synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
        return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise SourceError(f"{meta}: not the devkit's meta.mat (a 'synsets' struct with ILSVRC2012_ID, WNID, "
                          f"num_children): {e}") from None


def _ground_truth_synsets(path: Path) -> dict[str, str]:
    """ILSVRC2012_validation_ground_truth.txt -> {image id: synset}, ids mapped by meta.mat."""
    ids = {}
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip().isdigit():
            raise SourceError(f"{path}: line {number}: {text[:40]!r} is not a class id (an integer 1-1000)")
        ids[number] = int(text)
    to_synset = _meta_synsets(path.parent / "meta.mat")
    out = {}
    for number, class_id in ids.items():
        if class_id not in to_synset:
            raise SourceError(f"{path}: line {number}: class id {class_id} is not a leaf class of "
                              f"{path.parent / 'meta.mat'}")
        out[f"ILSVRC2012_val_{number:08d}"] = to_synset[class_id]
    return out


def read_flat_folder(root: Path, labels_file: Path, class_names: list[str], names_file: str | Path) -> ClassificationSet:
    if not labels_file.is_file():
        raise SourceError(f"imagenet: the labels file {labels_file} not found (config key "
                          f"'data.sources.imagenet_val_labels'); to obtain it, {WHERE_TO_OBTAIN['imagenet']}")
    if labels_file.suffix.lower() == ".csv":
        synsets, layout = _loc_csv_synsets(labels_file), "loc_csv"
    else:
        synsets, layout = _ground_truth_synsets(labels_file), "ground_truth_txt"
    classes = sorted(set(synsets.values()))
    _check_count(len(classes), class_names, f"{labels_file}", names_file)
    index = {s: i for i, s in enumerate(classes)}
    files = {p.stem: p for p in root.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png")}
    paths, labels = [], []
    for image_id in sorted(synsets):
        if image_id in files:
            paths.append(files[image_id])
            labels.append(index[synsets[image_id]])
    if not paths:
        raise SourceError(f"{root}: none of the {len(synsets)} images that {labels_file} lists is there")
    return ClassificationSet(paths, labels, class_names, layout, missing=len(synsets) - len(paths))


def read_classification_set(images: str | Path, labels_file: str | Path | None,
                            class_names_file: str | Path) -> ClassificationSet:
    """A classification set from `data.sources` (imagenet_val, imagenet_val_labels, imagenet_classes):
    folder per class when `labels_file` is None, else a flat folder with its labels file."""
    images = Path(images)
    if not images.is_dir():
        raise SourceError(f"imagenet: the image folder {images} not found (config key 'data.sources.imagenet_val'); "
                          f"to obtain it, {WHERE_TO_OBTAIN['imagenet']}")
    names = read_class_names(class_names_file)
    if labels_file is None:
        return read_image_folder(images, names, class_names_file)
    return read_flat_folder(images, Path(labels_file), names, class_names_file)


def split_per_class(labels: list[int], test_fraction: float) -> tuple[list[int], list[int]]:
    """(train indices, test indices): within each class, in file order, a `test_fraction` share of the
    images spread evenly through it goes to test (deterministic: the linear probe's split)."""
    train, test, seen = [], [], {}
    for i, label in enumerate(labels):
        k = seen.get(label, 0)
        seen[label] = k + 1
        (test if int((k + 1) * test_fraction) > int(k * test_fraction) else train).append(i)
    return train, test
