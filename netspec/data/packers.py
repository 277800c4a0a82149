"""Pack the standard segmentation datasets, from their usual on-disk layouts, into the LMDB pair that
:class:`netspec.layers.seg_lmdb.SegDataLayer` reads: ``OUT/images`` (PNG-encoded BGR Datums) and ``OUT/labels``
(PNG-encoded single-channel Datums of class indices, 255 = ignore), records paired by position (keys
``00000000_<id>``, ...). Each LMDB is written atomically (``LMDBWriter``).

    python tools/build_seg_lmdb.py DATASET ROOT OUT [--split train]

=================  ================================================================  ======================
DATASET            ROOT holds                                                        labels
=================  ================================================================  ======================
``voc``            VOC2012: ``JPEGImages/``, ``SegmentationClass/`` (palette PNGs),   21: palette indices,
                   ``ImageSets/Segmentation/{split}.txt`` (ROOT may be VOCdevkit).    255 kept
                   ``--sbd DIR`` adds SBD's train+val images (``.mat`` labels) not
                   in VOC's ``val.txt``: the usual "train_aug" set.
``sbd``            SBD ``dataset/``: ``img/``, ``cls/*.mat`` (GTcls), ``{split}.txt``  21
``ade20k``         ADEChallengeData2016: ``images/{training,validation}/*.jpg``,     150: 0 (other) -> 255,
                   ``annotations/.../*.png`` (split train/val or the folder name)     k -> k - 1
``cityscapes``     ``leftImg8bit/{split}/{city}/*_leftImg8bit.png``,                 19 trainIds; other
                   ``gtFine/{split}/{city}/*_gtFine_labelIds.png``                   labelIds -> 255
``idd``            IDD_Segmentation (ROOT or its parent): ``leftImg8bit/{split}/{seq}/``  26 level-3 ids kept,
                   ``*_leftImg8bit.png``, ``gtFine/{split}/{seq}/*_gtFine_``          255 (void) kept
                   ``labellevel3Ids.png`` (made by IDD's ``createLabels.py``)
``kitti-road``     data_road: ``training/image_2/*.png``, ``training/gt_image_2/``    2: road (blue > 0) 1,
                   ``*_road_*.png`` (ROOT may be ``training``; ``ROOT/{split}.txt``   other 0, outside the
                   of image names limits the set)                                    valid area (red = 0) 255
``nyud``           FCN's NYUDv2: ``data/images/img_{id}.png``,                        40: 0 (void) -> 255,
                   ``segmentation/img_{id}.mat``, ``{split}.txt``                    k -> k - 1
``pascal-context`` the context dir: ``trainval/*.mat``, ``labels.txt``,              60 as FCN: 0 background,
                   ``59_labels.txt``; images and ``ImageSets/Main/{split}.txt`` of    1..59; with
                   VOC2010 (``--voc-dir``, default found beside ROOT)                 ``--ignore-background``
                                                                                     59 (0 -> 255)
``siftflow``       ``{split}.txt`` (trainval, test), ``Images/``, ``SemanticLabels/``  33 semantic (0 -> 255),
                   ``GeoLabels/`` (``.../spatial_envelope_256x256_static_...``)       or ``--target geometric``
=================  ================================================================  ======================

Bad input stops the packing before anything is written where it can be found up front (a listed file that
does not exist, named with its list line) and otherwise names the file (image/label size mismatch, label
values outside the dataset's range). At the end a summary gives the images, the pixels per class and the
ignored share, and ``OUT/class_weights.txt`` holds ``w_c = 1 - n_c / sum(n)`` over the labelled pixels of the
split, one per line; ``OUT/loss_param.prototxt`` holds the same as a ``loss_param { class_weight: ... }`` block
to paste into a SoftmaxWithLoss layer. The zoo's IDD nets (``unet_idd``, ``deeplabv3_resnet101_idd[_head]``)
take ``data/idd/train/class_weights.txt`` into their loss when generated with ``--class-weights-from-data``: pack
IDD's training split there, then run ``python tools/make_zoo.py --class-weights-from-data unet_idd
deeplabv3_resnet101_idd deeplabv3_resnet101_idd_head``.
"""
from __future__ import annotations

import argparse
import csv
import glob
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np

from ..errors import DataError, NetspecError
from . import fcn_files as F
from .classes import (CITYSCAPES_CLASSES, IDD_CLASSES, KITTI_ROAD_CLASSES, SIFTFLOW_GEO_CLASSES,  # noqa: F401
                      VOC_CLASSES)  # (their home is netspec.data.classes; these names stay importable here)
from .datum import encode_image, encoded_datum
from .lmdb_io import LMDBWriter

log = logging.getLogger("netspec")

__all__ = ["Sample", "Spec", "DATASETS", "pack", "format_summary", "class_weights", "loss_param_snippet", "main",
           "VOC_CLASSES", "CITYSCAPES_CLASSES", "CITYSCAPES_TRAIN_ID", "IDD_CLASSES", "IDD_ZOO_MODELS"]

IGNORE = 255

# labelId -> trainId for labelIds 0..33 (cityscapesScripts' labels.py); 255 = not evaluated.
CITYSCAPES_TRAIN_ID = (255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9,
                       10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18)
#: The zoo models whose loss takes the class weights of ``data/idd/train``.
IDD_ZOO_MODELS = ("unet_idd", "deeplabv3_resnet101_idd", "deeplabv3_resnet101_idd_head")


@dataclass
class Sample:
    """One image/label pair: ``read_label(label, where)`` gives the H x W uint8 class map (255 = ignore)."""
    key: str
    image: str
    label: str
    where: str
    read_label: Callable[[str, str], np.ndarray]


@dataclass
class Spec:
    dataset: str
    split: str
    num_classes: int
    samples: List[Sample]
    class_names: Optional[Sequence[str]] = None
    notes: List[str] = field(default_factory=list)
    hints: List[str] = field(default_factory=list)  # printed after the class weights


# -- label conversions with range checks ----------------------------------------------------------------------

def _check_range(raw: np.ndarray, lo: int, hi: int, path: str, where: str, what: str, extra=()) -> np.ndarray:
    raw = np.asarray(raw)
    ok = (raw >= lo) & (raw <= hi)
    for v in extra:
        ok |= raw == v
    if not ok.all():
        bad = np.unique(raw[~ok])
        shown = ", ".join(f"{v:g}" for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        allowed = f"{lo}..{hi}" + "".join(f" or {v}" for v in extra)
        raise DataError(f"{where}: label '{path}' has values {shown} outside the {what} range ({allowed})")
    return raw


def _shift_void(raw: np.ndarray) -> np.ndarray:
    """0 (void/other) -> 255, k -> k - 1 (the uint8 wrap FCN uses)."""
    return raw.astype(np.uint8) - np.uint8(1)


def _voc_reader(path, where):
    return _check_range(F.voc_label(path, where), 0, 20, path, where, "VOC class", extra=(IGNORE,)).astype(np.uint8)


def _sbd_reader(path, where):
    raw = F.load_mat(path, "GTcls", "Segmentation", where=where)
    return _check_range(raw, 0, 20, path, where, "VOC class", extra=(IGNORE,)).astype(np.uint8)


def _ade_reader(path, where):
    return _shift_void(_check_range(F.read_index_png(path, where), 0, 150, path, where, "ADE20K (0 = other, 1..150)"))


_CITY_LUT = np.array(CITYSCAPES_TRAIN_ID, np.uint8)


def _cityscapes_reader(path, where):
    raw = _check_range(F.read_index_png(path, where), 0, len(_CITY_LUT) - 1, path, where, "Cityscapes labelId")
    return _CITY_LUT[raw.astype(np.int64)]


def _idd_reader(path, where):
    raw = _check_range(F.read_index_png(path, where), 0, len(IDD_CLASSES) - 1, path, where, "IDD level3Id",
                       extra=(IGNORE,))
    return raw.astype(np.uint8)


def _kitti_reader(path, where):
    """KITTI road ground truth (devkit convention): blue > 0 road, red > 0 inside the evaluated area."""
    gt = cv2.imread(path, cv2.IMREAD_COLOR)
    if gt is None:
        if not os.path.exists(path):
            raise DataError(f"{where}: '{path}' does not exist")
        raise DataError(f"{where}: label '{path}' cannot be decoded by OpenCV")
    road, valid = gt[:, :, 0] > 0, gt[:, :, 2] > 0
    return np.where(valid, road.astype(np.uint8), np.uint8(IGNORE)).astype(np.uint8)


def _nyud_reader(path, where):
    raw = F.load_mat(path, "segmentation", where=where)
    return _shift_void(_check_range(raw, 0, 40, path, where, "NYUDv2 40-class (0 = void)"))


def _siftflow_reader(kind):
    def read(path, where):
        raw = np.array(F.load_mat(path, "S", where=where))
        if kind == "semantic":
            raw = _check_range(raw, 0, 33, path, where, "SIFT Flow semantic (0 = unlabelled)")
        else:
            raw = _check_range(raw, -1, 3, path, where, "SIFT Flow geometric (-1, 0 = unlabelled)")
            raw[raw == -1] = 0
        return _shift_void(raw)
    return read


# -- dataset layouts ------------------------------------------------------------------------------------------

def _list_samples(list_path: str, make: Callable[[str, str], Sample]) -> List[Sample]:
    return [make(i, f"{list_path}:{n}") for i, n in F.read_split(list_path)]


def _find_dir(root: str, marker: str, subdirs: Sequence[str], what: str) -> str:
    for cand in [root] + [os.path.join(root, s) for s in subdirs]:
        if os.path.exists(os.path.join(cand, marker)):
            return cand
    raise DataError(f"{what}: no '{marker}' in '{root}'" + (f" (nor in {', '.join(subdirs)} below it)"
                                                             if subdirs else ""))


def voc(root, split, sbd: Optional[str] = None) -> Spec:
    vroot = _find_dir(root, "JPEGImages", ["VOC2012", "VOCdevkit/VOC2012"], "voc")
    sets = os.path.join(vroot, "ImageSets", "Segmentation")

    def make(i, where):
        return Sample(i, os.path.join(vroot, "JPEGImages", f"{i}.jpg"),
                      os.path.join(vroot, "SegmentationClass", f"{i}.png"), where, _voc_reader)
    samples = _list_samples(os.path.join(sets, f"{split}.txt"), make)
    notes = []
    if sbd:
        if "val" in split:
            raise DataError(f"--sbd builds the augmented training set; split '{split}' looks like a validation "
                            "split (SBD would leak into it)")
        sroot = _find_dir(sbd, "cls", ["dataset"], "--sbd")
        held_out = {i for i, _ in F.read_split(os.path.join(sets, "val.txt"))} \
            if os.path.isfile(os.path.join(sets, "val.txt")) else set()
        have = {s.key for s in samples}
        added = 0
        for name in ("train", "val"):
            lst = os.path.join(sroot, f"{name}.txt")
            if not os.path.isfile(lst):
                continue
            for i, n in F.read_split(lst):
                if i in have or i in held_out:
                    continue
                have.add(i)
                added += 1
                samples.append(Sample(i, os.path.join(sroot, "img", f"{i}.jpg"), os.path.join(sroot, "cls", f"{i}.mat"),
                                      f"{lst}:{n}", _sbd_reader))
        notes.append(f"SBD added {added} images (train+val, less VOC val's {len(held_out)} ids)")
    return Spec("voc", split, 21, samples, VOC_CLASSES, notes)


def sbd(root, split) -> Spec:
    sroot = _find_dir(root, "cls", ["dataset"], "sbd")

    def make(i, where):
        return Sample(i, os.path.join(sroot, "img", f"{i}.jpg"), os.path.join(sroot, "cls", f"{i}.mat"), where,
                      _sbd_reader)
    return Spec("sbd", split, 21, _list_samples(os.path.join(sroot, f"{split}.txt"), make), VOC_CLASSES)


def _scan(pattern: str, what: str) -> List[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(f"{what}: no images match '{pattern}'")
    return files


def ade20k(root, split) -> Spec:
    aroot = _find_dir(root, "images", ["ADEChallengeData2016"], "ade20k")
    sub = {"train": "training", "val": "validation"}.get(split, split)
    samples = []
    for img in _scan(os.path.join(aroot, "images", sub, "*.jpg"), "ade20k"):
        stem = os.path.splitext(os.path.basename(img))[0]
        samples.append(Sample(stem, img, os.path.join(aroot, "annotations", sub, f"{stem}.png"), img, _ade_reader))
    return Spec("ade20k", split, 150, samples, _ade_names(aroot))


def _ade_names(aroot: str) -> Optional[List[str]]:
    """The 150 class names of the SceneParsing release's ``objectInfo150.csv`` / ``.txt`` (in the dataset
    directory or beside it): the first synonym of the Name column, by Idx 1..150. None when absent or odd."""
    for d in (aroot, os.path.dirname(os.path.normpath(aroot))):
        for fname in ("objectInfo150.csv", "objectInfo150.txt"):
            path = os.path.join(d, fname)
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8", newline="") as f:
                text = f.read()
            rows = list(csv.reader(text.splitlines(), delimiter="\t" if "\t" in text else ","))
            names = {}
            for row in rows:
                if len(row) >= 2 and row[0].strip().isdigit():
                    names[int(row[0])] = re.split(r"[;,]", row[-1])[0].strip()
            if sorted(names) == list(range(1, 151)):
                return [names[i] for i in range(1, 151)]
            log.warning("%s: expected Idx 1..150 with a Name column; class names not taken from it", path)
            return None
    return None


def cityscapes(root, split) -> Spec:
    samples = []
    for img in _scan(os.path.join(root, "leftImg8bit", split, "*", "*_leftImg8bit.png"), "cityscapes"):
        city = os.path.basename(os.path.dirname(img))
        base = os.path.basename(img)[:-len("_leftImg8bit.png")]
        samples.append(Sample(base, img, os.path.join(root, "gtFine", split, city, f"{base}_gtFine_labelIds.png"),
                              img, _cityscapes_reader))
    return Spec("cityscapes", split, 19, samples, CITYSCAPES_CLASSES)


def idd(root, split) -> Spec:
    iroot = _find_dir(root, "gtFine", ["IDD_Segmentation"], "idd")
    samples = []
    for img in sorted(_scan(os.path.join(iroot, "leftImg8bit", split, "*", "*_leftImg8bit.*"), "idd")):
        seq = os.path.basename(os.path.dirname(img))
        base = os.path.basename(img).rsplit("_leftImg8bit.", 1)[0]
        samples.append(Sample(f"{seq}_{base}", img,
                              os.path.join(iroot, "gtFine", split, seq, f"{base}_gtFine_labellevel3Ids.png"), img,
                              _idd_reader))
    hints = []
    if split == "train":
        hints.append(f"the zoo's IDD nets ({', '.join(IDD_ZOO_MODELS)}) take their class_weight from "
                     "data/idd/train/class_weights.txt when generated; with this split packed there, run: "
                     f"python tools/make_zoo.py --class-weights-from-data {' '.join(IDD_ZOO_MODELS)}")
    return Spec("idd", split, len(IDD_CLASSES), samples, IDD_CLASSES, hints=hints)


def kitti_road(root, split) -> Spec:
    if split in ("test", "testing"):
        raise DataError("kitti-road: the testing set has no ground truth; pack 'train' (the training folder)")
    troot = _find_dir(root, "image_2", ["training"], "kitti-road")
    lst = os.path.join(root, f"{split}.txt")

    def make(stem, where):
        cat, _, num = stem.partition("_")
        return Sample(stem, os.path.join(troot, "image_2", f"{stem}.png"),
                      os.path.join(troot, "gt_image_2", f"{cat}_road_{num}.png"), where, _kitti_reader)
    if os.path.isfile(lst):
        samples = [make(os.path.splitext(i)[0], f"{lst}:{n}") for i, n in F.read_split(lst)]
    elif split in ("train", "training", "trainval"):
        samples = [make(os.path.splitext(os.path.basename(p))[0], p)
                   for p in _scan(os.path.join(troot, "image_2", "*.png"), "kitti-road")]
    else:
        raise DataError(f"kitti-road: split '{split}': no list '{lst}'; KITTI road has one labelled set, 'train'")
    return Spec("kitti-road", split, 2, samples, KITTI_ROAD_CLASSES)


def nyud(root, split) -> Spec:
    def make(i, where):
        return Sample(i, os.path.join(root, "data", "images", f"img_{i}.png"),
                      os.path.join(root, "segmentation", f"img_{i}.mat"), where, _nyud_reader)
    return Spec("nyud", split, 40, _list_samples(os.path.join(root, f"{split}.txt"), make))


def pascal_context(root, split, voc_dir: Optional[str] = None, ignore_background: bool = False) -> Spec:
    labels = F.ContextLabels(root)
    if voc_dir:
        vroot = _find_dir(voc_dir, "JPEGImages", ["VOC2010"], "--voc-dir")
    else:
        cands = [os.path.join(root, "VOC2010"), os.path.join(root, "..", "pascal", "VOC2010"),
                 os.path.join(root, "..", "VOC2010"), os.path.join(root, "..", "VOCdevkit", "VOC2010")]
        vroot = next((c for c in cands if os.path.isdir(os.path.join(c, "JPEGImages"))), None)
        if vroot is None:
            raise DataError("pascal-context: VOC2010 not found (looked in " + ", ".join(cands) + "); give --voc-dir")
    n = len(labels.lut)

    def read(path, where):
        raw = _check_range(F.load_mat(path, "LabelMap", where=where), 0, n - 1, path, where,
                           "PASCAL-Context label (labels.txt ids)")
        lab = labels.lut[raw.astype(np.int64)]
        return _shift_void(lab) if ignore_background else lab

    def make(i, where):
        return Sample(i, os.path.join(vroot, "JPEGImages", f"{i}.jpg"), os.path.join(root, "trainval", f"{i}.mat"),
                      where, read)
    samples = _list_samples(os.path.join(vroot, "ImageSets", "Main", f"{split}.txt"), make)
    names = list(labels.names) if ignore_background else ["background"] + list(labels.names)
    return Spec("pascal-context", split, len(names), samples, names)


def siftflow(root, split, target: str = "semantic") -> Spec:
    if target not in ("semantic", "geometric"):
        raise DataError(f"siftflow: --target {target!r}: semantic or geometric")
    folder = "SemanticLabels" if target == "semantic" else "GeoLabels"
    reader = _siftflow_reader(target)

    def make(i, where):
        return Sample(i, os.path.join(root, "Images", F.SIFTFLOW_SUBDIR, f"{i}.jpg"),
                      os.path.join(root, folder, F.SIFTFLOW_SUBDIR, f"{i}.mat"), where, reader)
    return Spec("siftflow", split, 33 if target == "semantic" else 3,
                _list_samples(os.path.join(root, f"{split}.txt"), make),
                None if target == "semantic" else SIFTFLOW_GEO_CLASSES)


DATASETS: Dict[str, Callable[..., Spec]] = {
    "voc": voc, "sbd": sbd, "ade20k": ade20k, "cityscapes": cityscapes, "idd": idd, "kitti-road": kitti_road,
    "nyud": nyud,
    "pascal-context": pascal_context, "siftflow": siftflow,
}


# -- packing --------------------------------------------------------------------------------------------------

def class_weights(counts: np.ndarray) -> np.ndarray:
    """``w_c = 1 - n_c / sum(n)`` (all 1 when nothing is labelled)."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    return np.ones_like(counts) if total == 0 else 1.0 - counts / total


def loss_param_snippet(weights: Sequence[float], ignore_label: int = IGNORE, per_line: int = 4) -> str:
    vals = [f"class_weight: {w:.6f}" for w in weights]
    rows = ["  " + " ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
    return "loss_param {\n" + f"  ignore_label: {ignore_label}\n" + "\n".join(rows) + "\n}"


def _check_files(samples: List[Sample]):
    bad = []
    for s in samples:
        bad.extend(f"{s.where}: '{f}' does not exist" for f in (s.image, s.label) if not os.path.isfile(f))
        if len(bad) >= 10:
            break
    if bad:
        raise DataError(f"{len(bad)}{'+' if len(bad) >= 10 else ''} listed files are missing (working directory "
                        f"{os.getcwd()}):\n  " + "\n  ".join(bad[:10]))


def pack(dataset: str, root, out, split: str = "train", *, overwrite: bool = False, progress: bool = True,
         limit: Optional[int] = None, **options) -> dict:
    """Pack ``dataset`` (a key of :data:`DATASETS`) from ``root`` into ``out/images`` + ``out/labels``.

    ``options`` go to the dataset (voc: sbd; pascal_context: voc_dir, ignore_background; siftflow: target).
    Returns the summary (see :func:`format_summary`)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}'; known: {', '.join(DATASETS)}")
    root, out = os.fspath(root), os.fspath(out)
    if not os.path.isdir(root):
        raise DataError(f"{dataset}: dataset root '{root}' is not a directory (working directory {os.getcwd()})")
    spec = DATASETS[dataset](root, split, **options)
    samples = spec.samples[:limit] if limit else spec.samples
    _check_files(samples)
    paths = {w: os.path.join(out, w) for w in ("images", "labels")}
    for p in paths.values():
        if os.path.exists(p) and not overwrite:
            raise DataError(f"'{p}' already exists; remove it or pass --overwrite")
    os.makedirs(out, exist_ok=True)
    C = spec.num_classes
    counts = np.zeros(256, np.int64)
    from tqdm import tqdm
    with LMDBWriter(paths["labels"], overwrite=overwrite) as wl, \
            LMDBWriter(paths["images"], overwrite=overwrite) as wi:
        for n, s in enumerate(tqdm(samples, unit="img", desc=f"{dataset} {split}", disable=not progress)):
            img = F.read_bgr(s.image, s.where)
            lab = s.read_label(s.label, s.where)
            if img.shape[:2] != lab.shape:
                raise DataError(f"{s.where}: image '{s.image}' is {img.shape[0]}x{img.shape[1]} but label "
                                f"'{s.label}' is {lab.shape[0]}x{lab.shape[1]}")
            hist = np.bincount(lab.ravel(), minlength=256) if lab.dtype == np.uint8 else None
            if hist is None or hist[C:IGNORE].any():  # a converter bug, not bad input
                raise DataError(f"{s.where}: label '{s.label}' converted to values outside 0..{C - 1} and {IGNORE}")
            counts += hist
            key = f"{n:08d}_{s.key}"[:500]
            wi.put(key, encoded_datum(encode_image(img, "png")).SerializeToString())
            wl.put(key, encoded_datum(encode_image(lab, "png")).SerializeToString())
    weights = class_weights(counts[:C])
    if spec.class_names:  # score.py reads it beside the data when --classes is not given
        with open(os.path.join(out, "class_names.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in spec.class_names))
    with open(os.path.join(out, "class_weights.txt"), "w") as f:
        f.write("".join(f"{w:.6f}\n" for w in weights))
    with open(os.path.join(out, "loss_param.prototxt"), "w") as f:
        f.write(loss_param_snippet(weights) + "\n")
    return {"dataset": dataset, "split": split, "out": out, "images": len(samples), "num_classes": C,
            "class_names": list(spec.class_names) if spec.class_names else None, "pixels": int(counts.sum()),
            "class_pixels": counts[:C].tolist(), "ignored": int(counts[IGNORE]), "class_weights": weights.tolist(),
            "notes": spec.notes, "hints": spec.hints}


def format_summary(s: dict) -> str:
    total = max(1, s["pixels"])
    labelled = max(1, sum(s["class_pixels"]))
    names = s["class_names"] or [str(c) for c in range(s["num_classes"])]
    lines = [f"packed {s['images']} {s['dataset']} '{s['split']}' images into {s['out']}/images and "
             f"{s['out']}/labels"]
    lines += s["notes"]
    lines.append(f"pixels: {s['pixels']}; ignored ({IGNORE}): {s['ignored']} = {100.0 * s['ignored'] / total:.2f}%")
    width = max(len(n) for n in names)
    lines.append(f"  {'':3} {'class':<{width}}  {'pixels':>12}  {'share':>7}  weight")
    for c, (name, n, w) in enumerate(zip(names, s["class_pixels"], s["class_weights"])):
        lines.append(f"  {c:3d} {name:<{width}}  {n:12d}  {100.0 * n / labelled:6.2f}%  {w:.6f}")
    lines.append(f"class weights w_c = 1 - n_c / sum(n) written to {os.path.join(s['out'], 'class_weights.txt')}; "
                 f"for SoftmaxWithLoss ({os.path.join(s['out'], 'loss_param.prototxt')}):")
    lines.append(loss_param_snippet(s["class_weights"]))
    lines += s.get("hints", [])
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="build_seg_lmdb.py",
                                description="Pack a segmentation dataset into the images/labels LMDB pair that "
                                            "SegDataLayer reads.")
    p.add_argument("dataset", metavar="DATASET", choices=sorted(DATASETS), help=", ".join(DATASETS))
    p.add_argument("root", metavar="ROOT", help="the dataset's folder, in its usual layout")
    p.add_argument("out", metavar="OUT", help="output folder: OUT/images, OUT/labels, OUT/class_weights.txt, "
                                              "OUT/loss_param.prototxt")
    p.add_argument("--split", default="train", help="split name (default train)")
    p.add_argument("--sbd", metavar="DIR", help="voc: add SBD (benchmark_RELEASE/dataset) train+val, less VOC val")
    p.add_argument("--voc-dir", metavar="DIR", help="pascal-context: the folder holding VOC2010")
    p.add_argument("--ignore-background", action="store_true",
                   help="pascal-context: 59 classes, background -> 255 (default: FCN's 60 with 0 = background)")
    p.add_argument("--target", choices=("semantic", "geometric"), default="semantic", help="siftflow labels")
    p.add_argument("--limit", type=int, default=None, help="pack only the first N images")
    p.add_argument("--overwrite", action="store_true", help="replace OUT/images and OUT/labels")
    p.add_argument("--quiet", "-q", action="store_true", help="log warnings and errors only (no progress bar)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the log lines stay)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(message)s")
    opts = {"voc": {"sbd": a.sbd}, "pascal-context": {"voc_dir": a.voc_dir, "ignore_background": a.ignore_background},
            "siftflow": {"target": a.target}}.get(a.dataset, {})
    for flag, ds in (("sbd", "voc"), ("voc_dir", "pascal-context")):
        if getattr(a, flag) and a.dataset != ds:
            p.error(f"--{flag.replace('_', '-')} applies to {ds} only")
    try:
        s = pack(a.dataset, a.root, a.out, a.split, overwrite=a.overwrite, progress=not (a.quiet or a.no_progress),
                 limit=a.limit,
                 **opts)
    except NetspecError as e:
        print(f"build_seg_lmdb: error: {e}", file=sys.stderr)
        return 1
    print(format_summary(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
