"""DenseImageData: SegNet's / ENet's image + label-image data layer (``DenseImageDataParameter``, a netspec
schema extension), as alexgkendall/caffe-segnet src/caffe/layers/dense_image_data_layer.cpp
(``DataLayerSetUp``, ``InternalThreadEntry``) with ENet's ``label_divide_factor`` (TimoSaemann/caffe-enet).

The source lists ``<image> <label image>`` pairs (whitespace separated, read as ``infile >> a >> b``), each
prefixed verbatim with ``root_folder``. Per item: the image is read with OpenCV (BGR, or gray without
``is_color``) and resized bilinearly to ``new_height`` x ``new_width`` when both are set; the label image is
read as gray and resized with nearest neighbour to ``new_height / f`` x ``new_width / f`` (f =
``label_divide_factor``). Then, in every phase as the fork: ``mirror`` flips both with probability 1/2, and
``crop_height`` x ``crop_width`` cuts both at one random offset. The image then goes through the layer's
``transform_param`` (scale, mean); the label keeps its pixel values. Tops: data N x C x H x W, label
N x 1 x H' x W' (float class indices). ``shuffle`` reshuffles the list every epoch; ``rand_skip`` skips a
random number of pairs at the start.

``transform_param.mirror`` / ``crop_size`` are refused, as SegNet's fork CHECKs: they would flip and crop
image and label independently (ENet's fork dropped the CHECK; the result is misaligned labels).
Loading runs in netspec's loader workers like ImageData (``netspec.data.workers``).
"""
from __future__ import annotations

import logging

import cv2
import numpy as np

from ..data.datum import list_file_lines, read_image
from ..data.shard import Shard
from ..errors import DataError, LayerError, NetspecError
from ..proto import caffe_pb2
from ..registry import Export, register
from .data import _DataModule, _ListStream, _ident, _transformer, check_batch_size, check_pair, resolve_path

log = logging.getLogger("netspec")


def read_pair_list(path):
    """``(image, label image, line number)`` for each pair of whitespace-separated names in ``path``."""
    tokens = [(t, lineno) for lineno, line in list_file_lines(path) for t in line.split()]
    if len(tokens) % 2:
        raise DataError(f"{path}:{tokens[-1][1]}: '{tokens[-1][0]}' has no label image (the list holds "
                        "<image> <label image> pairs)")
    return [(tokens[i][0], tokens[i + 1][0], tokens[i][1]) for i in range(0, len(tokens), 2)]


class _DensePairSource(_ListStream):
    def __init__(self, list_path, root, p, transformer, shard: Shard = Shard()):
        self.lines = read_pair_list(list_path)
        self.root = root
        self.new_size = (p.new_height, p.new_width)
        f = p.label_divide_factor
        self.label_size = (p.new_height // f, p.new_width // f)
        self.crop = (p.crop_height, p.crop_width)
        self.mirror = p.mirror
        self.is_color = p.is_color
        self.transformer = transformer
        self._start(list_path, p.batch_size, p.shuffle, p.rand_skip, shard, seeded=True)

    def describe(self):
        return f"source={self.list_path!r}, {len(self.lines)} pairs, batch_size={self.batch_size}"

    def _read(self, k, rng):
        img_name, lab_name, lineno = self.lines[k]
        where = f"{self.list_path}:{lineno}: "
        img = read_image(self.root + img_name, *self.new_size, self.is_color, where)
        lab = read_image(self.root + lab_name, 0, 0, False, where)[:, :, 0]
        if self.label_size[0] > 0 and self.label_size[1] > 0:
            lab = cv2.resize(lab, self.label_size[::-1], interpolation=cv2.INTER_NEAREST)
        if rng is not None and self.mirror and int(rng.integers(2)):
            img, lab = img[:, ::-1], lab[:, ::-1]
        ch, cw = self.crop
        if ch > 0 and cw > 0:
            h, w = img.shape[:2]
            if h < ch or w < cw or lab.shape[0] < ch or lab.shape[1] < cw:
                raise DataError(f"{where}image {h}x{w} / label {lab.shape[0]}x{lab.shape[1]} is smaller than "
                                f"the crop {ch}x{cw}")
            y = int(rng.integers(h - ch + 1))
            x = int(rng.integers(w - cw + 1))
            img, lab = img[y:y + ch, x:x + cw], lab[y:y + ch, x:x + cw]
        img = np.ascontiguousarray(img.transpose(2, 0, 1))
        return img, np.ascontiguousarray(lab), where

    def top_shapes(self):
        img, lab, _ = self._read(int(self.order[self.pos]), np.random.default_rng(0))
        return [(self.batch_size,) + tuple(img.shape), (self.batch_size, 1) + lab.shape]

    def item_name(self, task, i) -> str:
        img, lab, lineno = self.lines[task.items[i]]
        return f"{self.list_path}:{lineno}: images '{self.root + img}', '{self.root + lab}'"

    def build(self, task, out):
        n = self.batch_size
        data = label = None
        rng = np.random.default_rng(self.shard.rng_key(self.seed, task.index))
        for i, k in enumerate(task.items):
            out.item(i)
            try:
                img, lab, where = self._read(k, rng)
            except NetspecError:
                raise
            except Exception as e:  # a decoder's own failure: name the pair
                raise DataError(f"{self.item_name(task, i)}: {type(e).__name__}: {e}") from e
            shape = self.transformer.infer_shape(img.shape)
            if data is None:
                data = out.array((n,) + tuple(shape))
                label = out.array((n, 1) + lab.shape)
            elif tuple(shape) != data.shape[1:] or lab.shape != label.shape[2:]:
                raise DataError(f"{where}pair gives a {'x'.join(map(str, shape))} image and a "
                                f"{'x'.join(map(str, lab.shape))} label but this batch's first item has "
                                f"{'x'.join(map(str, data.shape[1:]))} and {'x'.join(map(str, label.shape[2:]))};"
                                " set new_height/new_width or crop_height/crop_width, or use batch_size 1")
            self.transformer(img, where, out=data[i], rng=rng)
            label[i, 0] = lab
        return data, label


@register("DenseImageData", bottoms=0, tops=2,
          export=Export(refuse="reads image files at run time: replace it with an Input layer (a deploy prototxt)"),
          example="")
def dense_image_data_layer(lp, bottom_shapes, ctx):
    """DenseImageData (SegNet / ENet): dense_image_data_param source, batch_size, shuffle, rand_skip,
    new_height / new_width (together), crop_height / crop_width (together), mirror, is_color, root_folder,
    label_divide_factor; rules in the module docstring. Tops: data, label."""
    ident = _ident(lp, ctx)
    p = lp.dense_image_data_param
    check_batch_size(p, "dense_image_data_param", ident)
    check_pair(p, "new_height", "new_width", ident)
    check_pair(p, "crop_height", "crop_width", ident)
    if p.label_divide_factor < 1:
        raise LayerError(f"{ident}: label_divide_factor must be at least 1 (got {p.label_divide_factor})")
    if p.HasField("mean_file"):
        log.warning("%s: dense_image_data_param.mean_file is not read by the fork; use transform_param", ident)
    tp = lp.transform_param
    if tp.mirror or tp.crop_size:
        raise LayerError(f"{ident}: transform_param mirror / crop_size would flip and crop the image and the label "
                         "independently (SegNet's fork refuses them); use dense_image_data_param mirror and "
                         "crop_height / crop_width, which treat both alike")
    source = resolve_path(p.source, ctx, "dense_image_data_param.source", ident)
    root = p.root_folder
    if root:
        root = resolve_path(root, ctx, "dense_image_data_param.root_folder", ident)
    try:
        src = _DensePairSource(source, root, p, _transformer(lp, ctx, ident), Shard.current(ctx.phase == caffe_pb2.TRAIN))
    except DataError as e:
        msg = str(e)
        raise DataError(msg if msg.startswith(ident) else f"{ident}: {msg}") from None
    return _DataModule(src, ident, prefetch=4)
