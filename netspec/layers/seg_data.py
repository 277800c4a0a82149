"""ImageSegData: DeepLab's segmentation data layer (images and label images from a list file).

As deeplab-public-ver2 src/caffe/layers/image_seg_data_layer.cpp (DataLayerSetUp, load_batch) and its
DataTransformer::TransformImgAndSeg (src/caffe/data_transformer.cpp); DeepLab v1 (deeplab-public) is the same
without ``scale_factors`` and ``crop_height``/``crop_width``.

``image_data_param``: ``source`` lists one item per line as whitespace-separated tokens: the image path, then
(``label_type`` PIXEL, the default IMAGE's integer, or nothing for NONE) the label; both are read from
``root_folder + token``. Images are read with OpenCV (BGR, or gray with ``is_color: false``) and resized to
``new_height`` x ``new_width`` when both are set; a PIXEL label is read as a gray image (resized the same way,
bilinearly, as DeepLab does); IMAGE fills the label with the line's integer, NONE with ``ignore_label``.
``shuffle`` shuffles the list at set-up and after every pass; ``rand_skip`` skips a random number of lines.

``transform_param`` (one random draw order per item: mirror, scale, crop offsets): a ``scale_factors`` entry
drawn at random resizes image (bilinear) and label (nearest); then image and label are padded at the bottom
and right up to the crop size (the image with the mean values, so it reads 0 after mean subtraction; the
label with ``ignore_label``), cropped to ``crop_size`` (or ``crop_height`` x ``crop_width``; random offsets in
TRAIN, centred in TEST), mirrored together, and the image gets ``(pixel - mean_value[c]) * scale``.
``mean_file`` is refused, as DeepLab refuses it.

Tops: ``data`` (N, C, h, w), ``label`` (N, 1, h, w) and ``data_dim`` (N, 1, 1, 2): each item's (height, width)
after ``new_height``/``new_width`` (before scale factors), capped at the batch's h and w. DeepLab's layer always
has three tops (Caffe adds the missing ones); here a prototxt may name one, two or three. Without a crop every
image must have the first image's size (DeepLab reads out of bounds otherwise; here it is an error).

Loading goes through netspec's data machinery (``_DataModule``: background loader workers, prefetch, data
parallel shards; each batch's random draws come from a generator seeded with (seed, batch index), so batches do
not depend on the number of workers). Random streams are numpy's, not Caffe's.
"""
from __future__ import annotations

import logging
import re
from typing import List, Optional, Tuple

import cv2
import numpy as np
import torch

from ..data.datum import list_file_lines, read_image
from ..data.shard import Shard
from ..data.transform import DataTransformer
from ..errors import DataError, NetspecError
from ..proto import caffe_pb2
from ..registry import Export, register
from .data import _DataModule, _ListStream, _deprecated_fields, _ident, check_batch_size, check_pair, resolve_path

log = logging.getLogger("netspec")

_INT = re.compile(r"\s*([+-]?\d+)")


def read_seg_list(path, with_label: bool) -> List[Tuple[str, str, int]]:
    """The list file as DeepLab reads it: per line the first whitespace-separated token (image) and, when
    ``with_label``, the second ('' when absent). Returns (image, label token, line number); blank lines are
    skipped (DeepLab would keep them as empty names and fail on them)."""
    out = []
    for lineno, line in list_file_lines(path):
        toks = line.split()
        out.append((toks[0], toks[1] if with_label and len(toks) > 1 else "", lineno))
    return out


def _atoi(text: str) -> int:
    """C's atoi: the leading integer, 0 when there is none."""
    m = _INT.match(text)
    return int(m.group(1)) if m else 0


class SegTransformer(DataTransformer):
    """DataTransformer plus DeepLab's TransformImgAndSeg (one random transform for an image and its label)."""

    def __init__(self, param, phase, ignore_label: int):
        if param.HasField("mean_file"):
            raise DataError("ImageSegData does not support mean_file (as DeepLab): use mean_value")
        has_h, has_w = param.HasField("crop_height"), param.HasField("crop_width")
        if not ((not param.HasField("crop_size") and has_h and has_w) or (not has_h and not has_w)):
            raise DataError("transform_param: give either crop_size or both crop_height and crop_width")
        super().__init__(param, phase)
        if has_h:
            self.crop_hw = (int(param.crop_height), int(param.crop_width))
        else:
            self.crop_hw = (self.crop_size, self.crop_size)
        if (self.crop_hw[0] == 0) != (self.crop_hw[1] == 0):
            raise DataError(f"transform_param: crop_height and crop_width must both be positive (got "
                            f"{self.crop_hw[0]} x {self.crop_hw[1]})")
        self.scale_factors = np.asarray(list(param.scale_factors), dtype=np.float32)
        self.ignore_label = int(ignore_label)
        cropping = self.crop_hw[0] > 0
        self.needs_rand = self.mirror or self.scale_factors.size > 0 or (phase == caffe_pb2.TRAIN and cropping)
        if self.needs_rand and self.seed is None:
            self.seed = int(torch.randint(0, 2 ** 62, (1,)).item())
            self._rng = np.random.default_rng(self.seed)

    def out_hw(self, h: int, w: int) -> Tuple[int, int]:
        """The item's output height and width: the crop, else the image's own."""
        return self.crop_hw if self.crop_hw[0] else (h, w)

    def img_and_seg(self, img: np.ndarray, seg: np.ndarray, data_out: np.ndarray, label_out: np.ndarray,
                    rng: Optional[np.random.Generator], where: str = "") -> None:
        """Transform H x W x C uint8 ``img`` and H x W uint8 ``seg`` into ``data_out`` (C, h, w) and
        ``label_out`` (1, h, w), float32."""
        rng = rng if rng is not None else self._rng
        c = img.shape[2]
        if seg.shape[:2] != img.shape[:2]:
            raise DataError(f"{where}label image is {seg.shape[0]}x{seg.shape[1]} but the image is "
                            f"{img.shape[0]}x{img.shape[1]}")
        mv = self.mean_values
        if mv.size not in (0, 1, c):
            raise DataError(f"{where}specify either 1 mean_value or as many as channels: {c} (got {mv.size})")
        mean = np.resize(mv, c).astype(np.float32) if mv.size else None
        do_mirror = self.mirror and int(rng.integers(2)) == 1
        h, w = img.shape[:2]
        if self.scale_factors.size:
            s = self.scale_factors[int(rng.integers(self.scale_factors.size))]
            if s != 1:
                # C++ `int *= float`: the product in float, truncated toward zero
                h, w = int(np.float32(h) * s), int(np.float32(w) * s)
                if h <= 0 or w <= 0:
                    raise DataError(f"{where}scale factor {s} leaves an empty image")
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c)
                seg = cv2.resize(seg, (w, h), interpolation=cv2.INTER_NEAREST)
        ch, cw = self.crop_hw
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        if pad_h or pad_w:  # bottom/right: the image with the mean (0 after subtraction), the label ignored
            fill = mean if mean is not None else np.zeros(c, np.float32)
            big = np.empty((h + pad_h, w + pad_w, c), np.float32)
            big[...] = fill
            big[:h, :w] = img
            lab = np.full((h + pad_h, w + pad_w), min(max(self.ignore_label, 0), 255), np.uint8)
            lab[:h, :w] = seg
            img, seg, h, w = big, lab, h + pad_h, w + pad_w
        oh, ow = data_out.shape[1:]
        if ch:
            if self.phase == caffe_pb2.TRAIN:
                y = int(rng.integers(h - ch + 1))
                x = int(rng.integers(w - cw + 1))
            else:
                y, x = (h - ch) // 2, (w - cw) // 2
            img, seg = img[y:y + ch, x:x + cw], seg[y:y + ch, x:x + cw]
        elif (h, w) != (oh, ow):
            raise DataError(f"{where}image is {h}x{w} but this batch's items are {oh}x{ow}; without a crop every "
                            "image must have the first image's size (set crop_size, or new_height/new_width)")
        src = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
        if mean is not None:
            src -= mean[:, None, None]
        if self.scale != 1:
            src *= self.scale
        lab = seg.astype(np.float32)[None]
        if do_mirror:
            src, lab = src[:, :, ::-1], lab[:, :, ::-1]
        data_out[...] = src
        label_out[...] = lab


class _SegListSource(_ListStream):
    """Batches of an ImageSegData list: ``plan`` takes the next lines (shuffled order, wrap-around), ``build``
    reads and transforms them with the batch's own generator."""

    def __init__(self, list_path, root, p, transformer: SegTransformer, ntops: int, shard: Shard = Shard()):
        self.root = root
        self.label_type = p.label_type
        self.lines = read_seg_list(list_path, self.label_type != caffe_pb2.ImageDataParameter.NONE)
        self.new_height, self.new_width, self.is_color = p.new_height, p.new_width, p.is_color
        self.ignore_label = p.ignore_label
        self.transformer = transformer
        self.ntops = ntops
        log.info("A total of %d images.", len(self.lines))
        self._start(list_path, p.batch_size, p.shuffle, p.rand_skip, shard)
        self._shape = self._first_shape()

    def describe(self):
        return f"source={self.list_path!r}, {len(self.lines)} images, batch_size={self.batch_size}"

    def _where(self, line) -> str:
        return f"{self.list_path}:{self.lines[line][2]}: "

    def _read(self, line):
        """(image H x W x C uint8, label H x W uint8, (height, width) for data_dim)."""
        name, lab, _ = self.lines[line]
        where = self._where(line)
        img = read_image(self.root + name, self.new_height, self.new_width, self.is_color, where)
        h, w = img.shape[:2]
        if self.label_type == caffe_pb2.ImageDataParameter.PIXEL:
            if not lab:
                raise DataError(f"{where}label_type PIXEL needs '<image> <label image>' on every line")
            seg = read_image(self.root + lab, self.new_height, self.new_width, False, where)[:, :, 0]
            if seg.shape != (h, w):
                raise DataError(f"{where}label image '{self.root + lab}' is {seg.shape[0]}x{seg.shape[1]}, the "
                                f"image is {h}x{w}")
        else:
            value = _atoi(lab) if self.label_type == caffe_pb2.ImageDataParameter.IMAGE else self.ignore_label
            seg = np.full((h, w), min(max(value, 0), 255), np.uint8)  # cv::Scalar into CV_8UC1 saturates
        return img, seg, (h, w)

    def _first_shape(self):
        img, _, (h, w) = self._read(int(self.order[self.pos]))
        oh, ow = self.transformer.out_hw(h, w)
        return img.shape[2], oh, ow

    def top_shapes(self):
        c, h, w = self._shape
        n = self.batch_size
        return [(n, c, h, w), (n, 1, h, w), (n, 1, 1, 2)][:self.ntops]

    def build(self, task, out):
        c, h, w = self._shape
        n = self.batch_size
        data = out.array((n, c, h, w))
        label = out.array((n, 1, h, w))
        dim = out.array((n, 1, 1, 2))
        rng = self.transformer.batch_rng(task.index, self.shard)
        for i, line in enumerate(task.items):
            out.item(i)
            try:
                img, seg, (ih, iw) = self._read(line)
                if img.shape[2] != c:
                    raise DataError(f"{self._where(line)}image has {img.shape[2]} channels, the first had {c}")
                self.transformer.img_and_seg(img, seg, data[i], label[i], rng, self._where(line))
            except NetspecError:
                raise
            except Exception as e:  # a decoder's own failure: name the list line
                raise DataError(f"{self.item_name(task, i)}: {type(e).__name__}: {e}") from e
            dim[i, 0, 0] = (min(h, ih), min(w, iw))
        return (data, label, dim)[:self.ntops]


@register("ImageSegData", bottoms=0, tops=(1, 3),
          export=Export(refuse="reads image files at run time: replace it with an Input layer (a deploy prototxt)"),
          colour="#DDDDDD",
          example="")
def image_seg_data_layer(lp, bottom_shapes, ctx):
    """ImageSegData (DeepLab): image_data_param source, root_folder, batch_size, shuffle, rand_skip,
    new_height/new_width, is_color, label_type (NONE/IMAGE/PIXEL, default IMAGE), ignore_label (255);
    transform_param mean_value, scale, mirror, crop_size | crop_height/crop_width, scale_factors.
    Tops data (N,C,h,w), label (N,1,h,w), data_dim (N,1,1,2)."""
    ident = _ident(lp, ctx)
    p = lp.image_data_param
    check_batch_size(p, "image_data_param", ident)
    check_pair(p, "new_height", "new_width", ident)
    _deprecated_fields(lp, p, ident)
    source = resolve_path(p.source, ctx, "image_data_param.source", ident)
    root = resolve_path(p.root_folder, ctx, "image_data_param.root_folder", ident) if p.root_folder else ""
    try:
        transformer = SegTransformer(lp.transform_param, ctx.phase, p.ignore_label)
        src = _SegListSource(source, root, p, transformer, len(lp.top), Shard.current(ctx.phase == caffe_pb2.TRAIN))
    except DataError as e:
        msg = str(e)
        raise DataError(msg if msg.startswith(ident) else f"{ident}: {msg}") from None
    return _DataModule(src, ident, prefetch=lp.data_param.prefetch if lp.HasField("data_param") else 4)
