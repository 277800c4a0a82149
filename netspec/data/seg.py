"""Segmentation data from an LMDB pair: image and label kept together through one random transform.

``source`` is a directory with ``images`` (PNG/JPEG-encoded or raw Datums, BGR) and ``labels`` (single-channel
Datums) LMDBs whose records pair up by position. As a Python layer::

    layer { name: "data" type: "Python" top: "data" top: "label"
            python_param { module: "netspec.data.seg" layer: "SegDataLayer"
                           param_str: "{'source': 'data/demo/train', 'batch_size': 8}" } }

param_str keys (parsed with ast.literal_eval): source, batch_size (1), shuffle (TRAIN), seed (1337),
mirror (TRAIN), mean (BGR tuple, (104.00699, 116.66877, 122.67892) as FCN), scale (1.0), crop (0 = none;
TRAIN random / TEST centre crop, labels padded with ignore_label where the crop leaves the image),
ignore_label (255), scale_jitter ((lo, hi) resize factor drawn per image, TRAIN only; image bilinear, label
nearest), rotate (max degrees of a random rotation, TRAIN only; image corners filled with the mean, label
corners with ignore_label). The same draw applies to image and label. With batch_size 1 images keep their own size, as FCN feeds them.
"""
import os

import numpy as np

from ..errors import DataError
from ..layers.python import Layer, parse_param_str
from ..proto import caffe_pb2
from .datum import decode_datum, parse_datum
from .lmdb_io import LMDBReader

DEMO_ROOT = os.path.join("data", "demo")


class SegDataLayer(Layer):
    def setup(self, bottom, top):
        p = parse_param_str(self.param_str)
        if not isinstance(p, dict) or "source" not in p:
            raise DataError("SegDataLayer: param_str must be a dict with at least 'source'")
        train = self.phase == caffe_pb2.TRAIN
        self.source = p["source"]
        self.batch_size = int(p.get("batch_size", 1))
        self.shuffle = bool(p.get("shuffle", train))
        self.mirror = bool(p.get("mirror", train))
        self.mean = np.array(p.get("mean", (104.00699, 116.66877, 122.67892)), np.float32).reshape(3, 1, 1)
        self.scale = float(p.get("scale", 1.0))
        self.crop = int(p.get("crop", 0))
        self.ignore = int(p.get("ignore_label", 255))
        self.jitter = tuple(p["scale_jitter"]) if p.get("scale_jitter") and train else None
        self.rotate = float(p.get("rotate", 0)) if train else 0.0
        self.rng = np.random.default_rng(int(p.get("seed", 1337)))
        self.train = train
        if len(top) != 2:
            raise DataError("SegDataLayer needs two tops: data and label")
        root = os.path.normpath(os.path.dirname(self.source))
        if not os.path.isdir(self.source) and root == os.path.normpath(DEMO_ROOT):
            from .synthetic import pack
            pack(DEMO_ROOT)
        for what in ("images", "labels"):
            if not os.path.isdir(os.path.join(self.source, what)):
                raise DataError(f"SegDataLayer: '{os.path.join(self.source, what)}' is missing (working "
                                f"directory {os.getcwd()}). Build the dataset first, e.g. "
                                "`python -m netspec.data.synthetic data/demo` for the demo")
        self.images = LMDBReader(os.path.join(self.source, "images"))
        self.labels = LMDBReader(os.path.join(self.source, "labels"))
        if len(self.images) != len(self.labels):
            raise DataError(f"SegDataLayer: {self.source}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.images) == 0:
            raise DataError(f"SegDataLayer: {self.source} is empty")
        self.order = np.arange(len(self.images))
        self.pos = 0
        self._epoch()
        self._next = self._load_batch()
        self._reshape_tops(top)

    def _epoch(self):
        if self.shuffle:
            self.rng.shuffle(self.order)
        self.pos = 0

    def _pair(self, i):
        img = decode_datum(parse_datum(self.images[i], key=i), key=i).astype(np.float32)
        lab = decode_datum(parse_datum(self.labels[i], key=i), key=i, force_gray=True)
        if img.shape[1:] != lab.shape[1:]:
            raise DataError(f"SegDataLayer: record {i}: image {img.shape[1:]} and label {lab.shape[1:]} differ in size")
        img = (img[:3] - self.mean) * self.scale
        lab = lab[:1].astype(np.float32)
        if self.jitter or self.rotate:
            img, lab = self._warp(img, lab)
        if self.crop:
            img, lab = self._crop(img, lab)
        if self.mirror and self.rng.random() < 0.5:
            img, lab = img[:, :, ::-1], lab[:, :, ::-1]
        return img, lab

    def _warp(self, img, lab):
        import cv2
        h, w = img.shape[1:]
        s = float(self.rng.uniform(*self.jitter)) if self.jitter else 1.0
        a = float(self.rng.uniform(-self.rotate, self.rotate)) if self.rotate else 0.0
        H, W = max(1, int(round(h * s))), max(1, int(round(w * s)))
        m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), a, s)
        m[0, 2] += (W - w) / 2.0
        m[1, 2] += (H - h) / 2.0
        im = cv2.warpAffine(np.ascontiguousarray(img.transpose(1, 2, 0)), m, (W, H), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        lb = cv2.warpAffine(np.ascontiguousarray(lab[0]), m, (W, H), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=float(self.ignore))
        return im.reshape(H, W, -1).transpose(2, 0, 1), lb[None]

    def _crop(self, img, lab):
        c, h, w = img.shape
        H, W = max(h, self.crop), max(w, self.crop)
        if (H, W) != (h, w):
            img = np.pad(img, ((0, 0), (0, H - h), (0, W - w)))
            lab = np.pad(lab, ((0, 0), (0, H - h), (0, W - w)), constant_values=self.ignore)
        if self.train:
            y, x = self.rng.integers(0, H - self.crop + 1), self.rng.integers(0, W - self.crop + 1)
        else:
            y, x = (H - self.crop) // 2, (W - self.crop) // 2
        return img[:, y:y + self.crop, x:x + self.crop], lab[:, y:y + self.crop, x:x + self.crop]

    def _load_batch(self):
        imgs, labs = [], []
        for _ in range(self.batch_size):
            if self.pos >= len(self.order):
                self._epoch()
            i, self.pos = int(self.order[self.pos]), self.pos + 1
            a, b = self._pair(i)
            imgs.append(a)
            labs.append(b)
        if len({x.shape for x in imgs}) > 1:
            raise DataError("SegDataLayer: images of different sizes need batch_size 1 or a 'crop'")
        return np.stack(imgs), np.stack(labs)

    def _reshape_tops(self, top):
        top[0].reshape(*self._next[0].shape)
        top[1].reshape(*self._next[1].shape)

    def reshape(self, bottom, top):
        self._reshape_tops(top)

    def forward(self, bottom, top):
        data, label = self._next
        top[0].reshape(*data.shape)
        top[1].reshape(*label.shape)
        top[0].data[...] = data
        top[1].data[...] = label
        self._next = self._load_batch()

    def backward(self, top, propagate_down, bottom):
        pass
