"""SSD's AnnotatedDatum records: build and read them (the fork's ``convert_annoset`` as a function).

An AnnotatedDatum (weiliu89/caffe branch ssd, caffe.proto) is a Datum (usually an encoded JPEG/PNG) with
``type: BBOX`` and one ``AnnotationGroup`` per class label, each holding its boxes as ``NormalizedBBox``
(coordinates in [0, 1] of the image width/height) with an ``instance_id``. The fork's
``ReadRichImageToAnnotatedDatum`` groups the boxes of one label together (groups in order of first
appearance, instance ids counting up per group); :func:`annotated_datum` does the same.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import numpy as np

from ..errors import DataError
from ..proto import caffe_pb2
from .datum import encode_image, encoded_datum, image_to_datum
from .lmdb_io import LMDBWriter

__all__ = ["annotated_datum", "write_annotated_lmdb", "annotation_rows"]

#: A box: (label, xmin, ymin, xmax, ymax) or (label, xmin, ymin, xmax, ymax, difficult), normalized to [0, 1].
Box = Sequence[float]


def annotated_datum(img: np.ndarray, boxes: Iterable[Box], encode: str = "png") -> "caffe_pb2.AnnotatedDatum":
    """An AnnotatedDatum of an H x W x C (BGR) or H x W uint8 image and its boxes.

    ``encode`` is the image format stored (``"png"``, ``"jpg"``; as ``convert_annoset --encode_type``), or
    ``""`` for a raw Datum. Boxes with the same label form one group, in order of first appearance."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise DataError(f"annotated_datum needs an H x W [x C] uint8 image, got {img.dtype} {img.shape}")
    ad = caffe_pb2.AnnotatedDatum()
    if encode:
        ad.datum.CopyFrom(encoded_datum(encode_image(img, encode)))
        # as the fork's EncodeCVMatToDatum: the size is recorded next to the encoded bytes
        ad.datum.height, ad.datum.width = img.shape[:2]
        ad.datum.channels = img.shape[2] if img.ndim == 3 else 1
    else:
        ad.datum.CopyFrom(image_to_datum(img))
    ad.type = caffe_pb2.AnnotatedDatum.BBOX
    groups = {}
    for b in boxes:
        if len(b) not in (5, 6):
            raise DataError(f"a box is (label, xmin, ymin, xmax, ymax[, difficult]), got {tuple(b)}")
        label = int(b[0])
        if label not in groups:
            groups[label] = ad.annotation_group.add()
            groups[label].group_label = label
        g = groups[label]
        a = g.annotation.add()
        a.instance_id = len(g.annotation) - 1
        a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = (float(v) for v in b[1:5])
        a.bbox.difficult = bool(b[5]) if len(b) > 5 else False
    return ad


def write_annotated_lmdb(path, items: Iterable[Tuple[np.ndarray, Iterable[Box]]], encode: str = "png",
                         overwrite: bool = False) -> int:
    """Write ``(image, boxes)`` pairs to a new LMDB of AnnotatedDatum (keys ``%08d_<index>``, as the fork's
    ``convert_annoset`` writes them, in order). Returns the number of records."""
    n = 0
    with LMDBWriter(path, overwrite=overwrite) as w:
        for i, (img, boxes) in enumerate(items):
            w.put(f"{i:08d}_{i}", annotated_datum(img, boxes, encode).SerializeToString())
            n += 1
    return n


def annotation_rows(ad: "caffe_pb2.AnnotatedDatum") -> np.ndarray:
    """The boxes of an AnnotatedDatum as float32 rows (group_label, instance_id, xmin, ymin, xmax, ymax,
    difficult), groups in order."""
    rows = [(g.group_label, a.instance_id, a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax, a.bbox.difficult)
            for g in ad.annotation_group for a in g.annotation]
    return np.asarray(rows, dtype=np.float32).reshape(-1, 7)
