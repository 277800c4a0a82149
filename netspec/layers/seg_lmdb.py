"""Segmentation data from an LMDB pair: image and label kept together through one random transform.

``source`` is a directory with ``images`` (PNG/JPEG-encoded or raw Datums, BGR) and ``labels`` (single-channel
Datums) LMDBs whose records pair up by position. As a Python layer::

    layer { name: "data" type: "Python" top: "data" top: "label"
            python_param { module: "netspec.data.seg" layer: "SegDataLayer"
                           param_str: "{'source': 'data/demo/train', 'batch_size': 8}" } }

It is built in (:data:`netspec.layers.python.BUILTIN`) under ``netspec.data.seg.SegDataLayer``, the name
prototxts use (the layer lived in ``netspec/data/seg.py`` before), and under this module's own name,
``netspec.layers.seg_lmdb.SegDataLayer``.

param_str keys (parsed with ast.literal_eval): source, batch_size (1), shuffle (TRAIN), seed (1337),
mirror (TRAIN), mean (BGR tuple, (104.00699, 116.66877, 122.67892) as FCN), scale (1.0), crop (0 = none;
TRAIN random / TEST centre crop, labels padded with ignore_label where the crop leaves the image),
ignore_label (255), scale_jitter ((lo, hi) resize factor drawn per image, TRAIN only; image bilinear, label
nearest), rotate (max degrees of a random rotation, TRAIN only; image corners filled with the mean, label
corners with ignore_label). The same draw applies to image and label. With batch_size 1 images keep their own
size, as FCN feeds them.

workers (default ``NETSPEC_LOADER_WORKERS``, else 1) and prefetch (4): batches are built ahead by that many
loader workers, ``prefetch`` batches in flight (see ``netspec.data.workers``; workers 0 loads inside forward).
``seed`` drives the epoch shuffles; each batch's augmentation draws from a generator seeded with (seed, batch
index), so the batches are the same with any number of workers.

The item stream (epoch shuffles, data-parallel shards, resume state) is :class:`netspec.layers.data._ListStream`'s
and the loading (inline, or ahead in loader workers, rewound for resume) :class:`netspec.layers.data._DataModule`'s,
as for ImageData. The joint image/label transform is this layer's own: Caffe's DataTransformer transforms an
image alone (and draws mirror before the crop), DeepLab's SegTransformer draws scale factors from a list.

A missing ``source`` is an error naming the way to build it; ``tools/train.py`` packs the synthetic demo set
when a net reads ``data/demo`` and it is not there yet (:func:`netspec.authoring.zoo.demo.pack_missing_data`).
"""
import os

import numpy as np

from ..data.datum import decode_datum, parse_datum
from ..data.lmdb_io import LMDBReader
from ..data.shard import Shard
from ..data.transform import FCN_MEAN
from ..data.workers import loader_kind, loader_workers
from ..errors import DataError
from ..proto import caffe_pb2
from .data import _DataModule, _ListStream
from .python import BUILTIN, Layer, parse_param_str


class _SegSource(_ListStream):
    """Batches of (image, label) pairs: ``plan`` takes the next indices of the (shuffled, ``seed``-ed) record
    order, ``build`` decodes and augments them with the batch's own generator."""

    def __init__(self, source, batch_size, shuffle, mirror, mean, scale, crop, ignore, jitter, rotate, seed,
                 train):
        self.source = source
        self.mirror, self.mean, self.scale = mirror, mean, scale
        self.crop, self.ignore, self.jitter, self.rotate, self.train = crop, ignore, jitter, rotate, train
        self.images = LMDBReader(os.path.join(source, "images"))
        self.labels = LMDBReader(os.path.join(source, "labels"))
        if len(self.images) != len(self.labels):
            raise DataError(f"SegDataLayer: {source}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.images) == 0:
            raise DataError(f"SegDataLayer: {source} is empty")
        self.lines = range(len(self.images))  # the stream's items: record positions
        self._start(source, batch_size, shuffle, 0, Shard.current(train), seed=seed)

    def plan(self):
        for r in (self.images, self.labels):
            r.keys()  # listed here, in the consumer's thread, before worker threads share the readers
        return super().plan()

    def item_name(self, task, i) -> str:
        return f"SegDataLayer: {self.source}: record {task.items[i]}"

    def build(self, task, out):
        rng = np.random.default_rng(self.shard.rng_key(self.seed, task.index))
        imgs, labs = [], []
        for j, i in enumerate(task.items):
            out.item(j)
            a, b = self._pair(i, rng)
            imgs.append(a)
            labs.append(b)
        if len({x.shape for x in imgs}) > 1:
            raise DataError("SegDataLayer: images of different sizes need batch_size 1 or a 'crop'")
        data = out.array((len(imgs),) + imgs[0].shape)
        label = out.array((len(labs),) + labs[0].shape)
        for j, (a, b) in enumerate(zip(imgs, labs)):
            data[j], label[j] = a, b
        return data, label

    def set_state(self, state):
        super().set_state(state)
        if self.pos >= len(self.order):  # saved by the layer's own stream (before it moved): an epoch just ended
            self.pos = 0
            if self.shuffle:
                self.order = self._rng.permutation(self.order)

    def _pair(self, i, rng):
        img = decode_datum(parse_datum(self.images[i], key=i), key=i).astype(np.float32)
        lab = decode_datum(parse_datum(self.labels[i], key=i), key=i, force_gray=True)
        if img.shape[1:] != lab.shape[1:]:
            raise DataError(f"SegDataLayer: record {i}: image {img.shape[1:]} and label {lab.shape[1:]} differ in size")
        img = (img[:3] - self.mean) * self.scale
        lab = lab[:1].astype(np.float32)
        if self.jitter or self.rotate:
            img, lab = self._warp(img, lab, rng)
        if self.crop:
            img, lab = self._crop(img, lab, rng)
        if self.mirror and rng.random() < 0.5:
            img, lab = img[:, :, ::-1], lab[:, :, ::-1]
        return img, lab

    def _warp(self, img, lab, rng):
        import cv2
        h, w = img.shape[1:]
        s = float(rng.uniform(*self.jitter)) if self.jitter else 1.0
        a = float(rng.uniform(-self.rotate, self.rotate)) if self.rotate else 0.0
        H, W = max(1, int(round(h * s))), max(1, int(round(w * s)))
        m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), a, s)
        m[0, 2] += (W - w) / 2.0
        m[1, 2] += (H - h) / 2.0
        im = cv2.warpAffine(np.ascontiguousarray(img.transpose(1, 2, 0)), m, (W, H), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        lb = cv2.warpAffine(np.ascontiguousarray(lab[0]), m, (W, H), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=float(self.ignore))
        return im.reshape(H, W, -1).transpose(2, 0, 1), lb[None]

    def _crop(self, img, lab, rng):
        c, h, w = img.shape
        H, W = max(h, self.crop), max(w, self.crop)
        if (H, W) != (h, w):
            img = np.pad(img, ((0, 0), (0, H - h), (0, W - w)))
            lab = np.pad(lab, ((0, 0), (0, H - h), (0, W - w)), constant_values=self.ignore)
        if self.train:
            y, x = rng.integers(0, H - self.crop + 1), rng.integers(0, W - self.crop + 1)
        else:
            y, x = (H - self.crop) // 2, (W - self.crop) // 2
        return img[:, y:y + self.crop, x:x + self.crop], lab[:, y:y + self.crop, x:x + self.crop]


#: param_str keys: name -> (check, what it must be). Checked before anything is read or allocated.
def _int(lo, hi=None):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi),
            f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


_KEYS = {
    "source": (lambda v: isinstance(v, str) and v != "", "a directory path"),
    "batch_size": _int(1, 4096), "workers": _int(0, 64), "prefetch": _int(0, 256), "seed": _int(0),
    "crop": _int(0, 8192), "ignore_label": _int(-2 ** 31, 2 ** 31 - 1),
    "shuffle": (lambda v: isinstance(v, bool), "True or False"), "mirror": (lambda v: isinstance(v, bool), "True or False"),
    "mean": (lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and all(map(_number, v)),
             "3 numbers (B, G, R)"),
    "scale": (lambda v: _number(v) and v > 0, "a positive number"),
    "scale_jitter": (lambda v: v is None or (isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_number, v))
                                            and 0 < v[0] <= v[1] <= 8), "(lo, hi) with 0 < lo <= hi <= 8"),
    "rotate": (lambda v: _number(v) and 0 <= v <= 180, "degrees between 0 and 180"),
}


def check_param_str(p) -> dict:
    """SegDataLayer's param_str, checked like a schema: a dict, known keys only (a misspelt key is an error
    naming the known ones), each value of its kind and range (a crop of 100000 would ask for 112 GiB)."""
    import difflib
    if not isinstance(p, dict) or "source" not in p:
        raise DataError("SegDataLayer: param_str must be a dict with at least 'source', e.g. "
                        "\"{'source': 'data/demo/train', 'batch_size': 8}\"")
    for key, value in p.items():
        if key not in _KEYS:
            near = difflib.get_close_matches(str(key), _KEYS, n=1)
            raise DataError(f"SegDataLayer: unknown param_str key {key!r}"
                            f"{f' (did you mean {near[0]!r}?)' if near else ''}; known keys: {', '.join(_KEYS)}")
        ok, what = _KEYS[key]
        if not ok(value):
            raise DataError(f"SegDataLayer: param_str '{key}' must be {what}, got {value!r}")
    return p


class _SegBatches(_DataModule):
    """The layer's batches (numpy arrays or CPU tensors): inline, or built ahead by ``workers`` loader workers
    (the layer's own count, not ``NETSPEC_LOADER_WORKERS``) with ``prefetch`` batches in flight."""

    def __init__(self, source, workers, prefetch):
        super().__init__(source, f"seg-{source.source}", prefetch)
        self.workers = workers

    def _workers(self):
        n = self.workers if self.prefetch > 0 else 0
        return n, (loader_kind() if n else None)


class SegDataLayer(Layer):
    def setup(self, bottom, top):
        p = check_param_str(parse_param_str(self.param_str))
        train = self.phase == caffe_pb2.TRAIN
        self.source = p["source"]
        self.batch_size = int(p.get("batch_size", 1))
        if len(top) != 2:
            raise DataError("SegDataLayer needs two tops: data and label")
        for what in ("images", "labels"):
            if not os.path.isdir(os.path.join(self.source, what)):
                raise DataError(f"SegDataLayer: '{os.path.join(self.source, what)}' is missing (working "
                                f"directory {os.getcwd()}). Build the dataset first, e.g. "
                                "`python -m netspec.data.synthetic data/demo` for the demo")
        self.workers = int(p["workers"]) if "workers" in p else loader_workers()
        self.prefetch = int(p.get("prefetch", 4))
        if self.workers < 0 or self.prefetch < 0:
            raise DataError(f"SegDataLayer: workers and prefetch must be >= 0 (got {self.workers}, {self.prefetch})")
        self.data = _SegSource(
            self.source, self.batch_size, bool(p.get("shuffle", train)), bool(p.get("mirror", train)),
            np.array(p.get("mean", FCN_MEAN), np.float32).reshape(3, 1, 1),
            float(p.get("scale", 1.0)), int(p.get("crop", 0)), int(p.get("ignore_label", 255)),
            tuple(p["scale_jitter"]) if p.get("scale_jitter") and train else None,
            float(p.get("rotate", 0)) if train else 0.0, int(p.get("seed", 1337)), train)
        self._batches = _SegBatches(self.data, self.workers, self.prefetch)
        self._next = None
        self._reshape_tops(top)

    def _load(self):
        return tuple(a if isinstance(a, np.ndarray) else a.numpy() for a in self._batches._next_batch())

    def _rewind(self):
        self._batches.rewind_prefetch()

    def train_state(self):
        """The consumer's position, for exact resume (netspec.solver.train_state): the source's state (read-ahead
        dropped) and the batch already read for the next forward, if any."""
        self._rewind()
        return self.data.get_state(), self._next

    def load_train_state(self, state):
        self._rewind()
        self.data.set_state(state[0])
        self._next = state[1]

    def __getstate__(self):
        self._rewind()  # before the source is copied: without the read-ahead
        return self.__dict__.copy()

    def _peek(self):
        """The batch the next forward delivers (loaded on first need, so errors surface there)."""
        if self._next is None:
            self._next = self._load()
        return self._next

    def _reshape_tops(self, top):
        data, label = self._peek()
        top[0].reshape(*data.shape)
        top[1].reshape(*label.shape)

    def reshape(self, bottom, top):
        self._reshape_tops(top)

    def forward(self, bottom, top):
        data, label = self._peek()
        self._next = None
        top[0].reshape(*data.shape)
        top[1].reshape(*label.shape)
        top[0].data[...] = data
        top[1].data[...] = label

    def backward(self, top, propagate_down, bottom):
        pass


for _name in ("netspec.data.seg.SegDataLayer", "netspec.layers.seg_lmdb.SegDataLayer"):
    BUILTIN.setdefault(_name, SegDataLayer)
