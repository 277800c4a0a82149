"""Built-in versions of the FCN reference data layers (fcn.berkeleyvision.org ``*_layers.py``), so the upstream
train/val/test prototxts run unchanged without those Python-2 modules on the path.

They are registered in :data:`netspec.layers.python.BUILTIN` under the names the prototxts use:

=============================================  ===================================  ============================
python_param ``module.layer``                  param_str keys                       tops
=============================================  ===================================  ============================
``voc_layers.VOCSegDataLayer``                 voc_dir, split, mean, randomize,     data, label
                                               seed
``voc_layers.SBDDSegDataLayer``                sbdd_dir, split, mean, randomize,    data, label
                                               seed
``siftflow_layers.SIFTFlowSegDataLayer``       siftflow_dir, split, randomize,      data, sem, geo
                                               seed
``nyud_layers.NYUDSegDataLayer``               nyud_dir, split, tops, randomize,    one per name in ``tops``
                                               seed                                 (color, depth, hha, label)
``pascalcontext_layers.PASCALContextSeg...``   voc_dir, context_dir, split,         data, label
                                               randomize, seed
=============================================  ===================================  ============================

Files, means and labels are upstream's:

* VOC: ``{voc_dir}/ImageSets/Segmentation/{split}.txt``, ``JPEGImages/{id}.jpg``, ``SegmentationClass/{id}.png``
  (the PNG's **palette indices**, 255 = void). SBD: ``{sbdd_dir}/{split}.txt``, ``img/{id}.jpg``,
  ``cls/{id}.mat`` variable ``GTcls``, field ``Segmentation``. Mean = param_str ``mean`` (upstream requires
  it; here it defaults to FCN's (104.00699, 116.66877, 122.67892)).
* SIFT Flow: ``{siftflow_dir}/{split}.txt``; ``Images/``, ``SemanticLabels/``, ``GeoLabels/`` each with
  ``spatial_envelope_256x256_static_8outdoorcategories/{id}.jpg|.mat`` (variable ``S``). Mean (114.578, 115.294,
  108.353). Geometric -1 becomes 0; then both labels are cast to uint8 and decremented there, so 0 wraps to
  255 (void) and class k becomes k - 1.
* NYUDv2: ``{nyud_dir}/{split}.txt``; ``data/images/img_{id}.png`` (BGR minus (116.190, 97.203, 92.318)),
  ``data/hha/img_{id}.png`` (file channel order, minus (132.431, 94.076, 118.477)), ``data/depth/img_{id}.png``
  (``log(d) - 7.844``, 1 channel; a zero depth gives -inf as upstream), ``segmentation/img_{id}.mat`` variable
  ``segmentation`` (40 classes, uint8 - 1: void 0 wraps to 255).
* PASCAL-Context: images and ``ImageSets/Main/{split}.txt`` of ``{voc_dir}/VOC2010``; labels
  ``{context_dir}/trainval/{id}.mat`` variable ``LabelMap`` (459 labels), mapped to the 59 classes of
  ``59_labels.txt`` by name through ``labels.txt`` (59_labels' diningtable/bedcloth/clothes are labels.txt's
  table/bedclothes/cloth): class k of 59_labels.txt becomes k + 1, anything else 0 (60 outputs).

Colour images: BGR float32 minus the BGR mean, C x H x W; labels 1 x H x W; every top gets N = 1 and the
image's own size, so the net is reshaped at every forward, as with Caffe.

Order, as upstream: when ``'train'`` is not in the split name the samples come in list order, wrapping
around; otherwise (``randomize``, default True) every forward draws ``randint(0, n - 1)`` from a generator
seeded once with ``seed``. Upstream seeds Python's global ``random`` module; here each layer owns a
``random.Random(seed)``, which gives the same draws as upstream under Python 3 when nothing else uses the
global generator (Python 2, where FCN ran, draws a different sequence from the same seed).

``'randomize': 'False'`` (a *string*, as in the Dilated FCN-2s prototxts): upstream keeps the string and tests
its truthiness, and ``bool('False')`` is True, so its training order was random. We keep that effective
behaviour (random order) and log a warning saying so; write ``'randomize': False`` for sequential order.

Additions over upstream (all errors are :class:`~netspec.errors.DataError`): every file the split lists is
checked at setup, and a missing one is named with its split-file line; an image and label of different sizes,
and label values a uint8 cannot hold (upstream would wrap them silently), are refused naming the file;
``mean`` may be given to every layer (upstream's SIFT Flow / NYUD / Context layers hard-code theirs); images
are decoded with OpenCV (EXIF orientation ignored, as PIL does), index PNGs with a built-in reader of palette
indices (no PIL needed); ``.mat`` files need ``scipy`` (v7.3 files ``h5py``).
"""
from __future__ import annotations

import logging
import os
import random
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from ..data.shard import Shard
from ..errors import DataError
from ..proto import caffe_pb2
from .python import BUILTIN, Layer, parse_param_str

log = logging.getLogger("netspec")

__all__ = [
    "VOCSegDataLayer", "SBDDSegDataLayer", "SIFTFlowSegDataLayer", "NYUDSegDataLayer", "PASCALContextSegDataLayer",
    "read_split", "read_bgr", "read_index_png", "load_mat", "voc_label", "sbd_label", "siftflow_label",
    "nyud_label", "ContextLabels", "VOC_MEAN", "SIFTFLOW_MEAN", "NYUD_COLOR_MEAN", "NYUD_HHA_MEAN",
    "NYUD_LOGD_MEAN", "CONTEXT_MEAN", "SIFTFLOW_SUBDIR",
]

from ..data.fcn_files import (  # noqa: F401  (the files; re-exported for netspec.data.fcn_layers)
    VOC_MEAN, SIFTFLOW_MEAN, NYUD_COLOR_MEAN, NYUD_HHA_MEAN, NYUD_LOGD_MEAN, CONTEXT_MEAN, SIFTFLOW_SUBDIR, read_split,
    read_bgr, read_index_png, load_mat, voc_label, sbd_label, siftflow_label, nyud_label, ContextLabels,
    _imread)


# -- the layers -----------------------------------------------------------------------------------------------

def _chw(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img.transpose(2, 0, 1))


_FALSE_STRINGS = ("false", "no", "off", "0", "none")


class _FCNSegLayer(Layer):
    """Shared behaviour: param_str, split list, order, one sample per forward (N = 1)."""

    NAME = ""          # "module.Layer" for messages
    REQUIRED: Tuple[str, ...] = ()
    MEAN: Sequence[float] = VOC_MEAN
    TOPS: Tuple[str, ...] = ("data", "label")

    # subclass API: configure(p) sets self.split_file; files(id) -> paths to check; load(id, where) -> arrays
    def configure(self, p: dict):
        raise NotImplementedError

    def files(self, i: str) -> List[str]:
        raise NotImplementedError

    def load(self, i: str, where: str) -> List[np.ndarray]:
        raise NotImplementedError

    def top_names(self) -> Tuple[str, ...]:
        return self.TOPS

    def setup(self, bottom, top):
        p = parse_param_str(self.param_str)
        if not isinstance(p, dict):
            raise DataError(f"{self.NAME}: param_str must be a dict, got {type(p).__name__}")
        missing = [k for k in self.REQUIRED if k not in p]
        if missing:
            raise DataError(f"{self.NAME}: param_str lacks {', '.join(repr(k) for k in missing)} "
                            f"(it needs {', '.join(self.REQUIRED)}; optional: randomize, seed, mean)")
        if len(bottom) != 0:
            raise DataError(f"{self.NAME}: a data layer takes no bottom")
        self.split = str(p["split"])
        self.mean = np.asarray(p.get("mean", self.MEAN), np.float32)
        self.configure(p)
        names = self.top_names()
        if len(top) != len(names):
            raise DataError(f"{self.NAME}: needs {len(names)} tops ({', '.join(names)}), the layer has {len(top)}")
        self.random = self._randomize(p)
        self.seed = p.get("seed")
        self.indices = read_split(self.split_file)
        self._check_files()
        self._rng = random.Random(self.seed)
        self.idx = self._rng.randint(0, len(self.indices) - 1) if self.random else 0
        self._loaded = None
        # data parallelism (netspec.data.shard): sample k of the shared stream is rank k mod world's
        self._shard = Shard.current(self.phase == caffe_pb2.TRAIN)
        for _ in range(self._shard.rank):
            self._advance()

    def _advance(self):
        if self.random:
            self.idx = self._rng.randint(0, len(self.indices) - 1)
        else:
            self.idx = (self.idx + 1) % len(self.indices)

    def train_state(self):
        """The sample index and the generator, for exact resume (netspec.solver.train_state)."""
        return self.idx, self._rng.getstate()

    def load_train_state(self, state):
        self.idx, rng = state
        self._rng.setstate(rng)

    def _randomize(self, p: dict) -> bool:
        r = p.get("randomize", True)
        sequential = "train" not in self.split
        if isinstance(r, str) and r.strip().lower() in _FALSE_STRINGS:
            log.warning("%s: param_str has 'randomize': %r, a string. Upstream tests it as a truth value and "
                        "bool(%r) is True, so upstream read the samples in random order; netspec does the same "
                        "(random, seed %r)%s. Write 'randomize': False (no quotes) for sequential order.",
                        self.NAME, r, r, p.get("seed"),
                        f"; here split '{self.split}' has no 'train' in its name, so the order is sequential "
                        "anyway" if sequential else "")
        return bool(r) and not sequential

    def _where(self, k: int) -> str:
        i, line = self.indices[k]
        return f"{self.split_file}:{line} ('{i}')"

    def _check_files(self):
        bad = []
        for k, (i, _) in enumerate(self.indices):
            bad.extend(f"{self._where(k)}: '{f}' does not exist" for f in self.files(i) if not os.path.isfile(f))
            if len(bad) >= 5:
                break
        if bad:
            raise DataError(f"{self.NAME}: files listed in split '{self.split}' are missing (working directory "
                            f"{os.getcwd()}):\n  " + "\n  ".join(bad[:5]))

    def _same_size(self, arrays, k):
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) > 1:
            files = ", ".join(f"'{f}' {a.shape[1]}x{a.shape[2]}" for f, a in zip(self.files(self.indices[k][0]),
                                                                               arrays))
            raise DataError(f"{self.NAME}: {self._where(k)}: image and label sizes differ: {files}")

    def reshape(self, bottom, top):
        if self._loaded is None or self._loaded[0] != self.idx:
            arrays = [np.asarray(a, np.float32) for a in self.load(self.indices[self.idx][0], self._where(self.idx))]
            self._same_size(arrays, self.idx)
            self._loaded = (self.idx, arrays)
        for t, a in zip(top, self._loaded[1]):
            t.reshape(1, *a.shape)

    def forward(self, bottom, top):
        for t, a in zip(top, self._loaded[1]):
            t.reshape(1, *a.shape)
            t.data[...] = a
        for _ in range(getattr(self, "_shard", Shard()).world):  # (a layer pickled before sharding)
            self._advance()

    def backward(self, top, propagate_down, bottom):
        pass

    def _image(self, path, where, mean=None):
        img = read_bgr(path, where).astype(np.float32)
        return _chw(img - (self.mean if mean is None else mean))


class VOCSegDataLayer(_FCNSegLayer):
    """PASCAL VOC: JPEGImages + SegmentationClass palette PNGs, list ImageSets/Segmentation/{split}.txt."""

    NAME = "voc_layers.VOCSegDataLayer"
    REQUIRED = ("voc_dir", "split")

    def configure(self, p):
        self.voc_dir = str(p["voc_dir"])
        self.split_file = os.path.join(self.voc_dir, "ImageSets", "Segmentation", f"{self.split}.txt")

    def files(self, i):
        return [os.path.join(self.voc_dir, "JPEGImages", f"{i}.jpg"),
                os.path.join(self.voc_dir, "SegmentationClass", f"{i}.png")]

    def load(self, i, where):
        img, lab = self.files(i)
        return [self._image(img, where), voc_label(lab, where)[None]]


class SBDDSegDataLayer(_FCNSegLayer):
    """SBD (Hariharan et al.): img/{id}.jpg + cls/{id}.mat ``GTcls.Segmentation``, list {sbdd_dir}/{split}.txt."""

    NAME = "voc_layers.SBDDSegDataLayer"
    REQUIRED = ("sbdd_dir", "split")

    def configure(self, p):
        self.sbdd_dir = str(p["sbdd_dir"])
        self.split_file = os.path.join(self.sbdd_dir, f"{self.split}.txt")

    def files(self, i):
        return [os.path.join(self.sbdd_dir, "img", f"{i}.jpg"), os.path.join(self.sbdd_dir, "cls", f"{i}.mat")]

    def load(self, i, where):
        img, lab = self.files(i)
        return [self._image(img, where), sbd_label(lab, where)[None]]


class SIFTFlowSegDataLayer(_FCNSegLayer):
    """SIFT Flow: tops data, sem (33 classes), geo (3 classes); list {siftflow_dir}/{split}.txt."""

    NAME = "siftflow_layers.SIFTFlowSegDataLayer"
    REQUIRED = ("siftflow_dir", "split")
    MEAN = SIFTFLOW_MEAN
    TOPS = ("data", "sem", "geo")

    def configure(self, p):
        self.siftflow_dir = str(p["siftflow_dir"])
        self.split_file = os.path.join(self.siftflow_dir, f"{self.split}.txt")

    def files(self, i):
        d = self.siftflow_dir
        return [os.path.join(d, "Images", SIFTFLOW_SUBDIR, f"{i}.jpg"),
                os.path.join(d, "SemanticLabels", SIFTFLOW_SUBDIR, f"{i}.mat"),
                os.path.join(d, "GeoLabels", SIFTFLOW_SUBDIR, f"{i}.mat")]

    def load(self, i, where):
        img, sem, geo = self.files(i)
        return [self._image(img, where), siftflow_label(sem, "semantic", where)[None],
                siftflow_label(geo, "geometric", where)[None]]


class NYUDSegDataLayer(_FCNSegLayer):
    """NYUDv2 (Gupta et al.'s layout): tops chosen by param_str ``tops`` among color, depth, hha, label."""

    NAME = "nyud_layers.NYUDSegDataLayer"
    REQUIRED = ("nyud_dir", "split", "tops")
    MEAN = NYUD_COLOR_MEAN
    KINDS = ("color", "depth", "hha", "label")

    def configure(self, p):
        self.nyud_dir = str(p["nyud_dir"])
        tops = p["tops"]
        if isinstance(tops, str) or not all(t in self.KINDS for t in tops):
            raise DataError(f"{self.NAME}: param_str 'tops' must be a list of {', '.join(self.KINDS)}; got {tops!r}")
        self.tops = tuple(tops)
        self.split_file = os.path.join(self.nyud_dir, f"{self.split}.txt")

    def top_names(self):
        return self.tops

    def _path(self, kind, i):
        if kind == "label":
            return os.path.join(self.nyud_dir, "segmentation", f"img_{i}.mat")
        return os.path.join(self.nyud_dir, "data", {"color": "images"}.get(kind, kind), f"img_{i}.png")

    def files(self, i):
        return [self._path(k, i) for k in self.tops]

    def load(self, i, where):
        out = []
        for kind in self.tops:
            path = self._path(kind, i)
            if kind == "color":
                out.append(self._image(path, where))
            elif kind == "hha":  # upstream keeps the file's channel order (PIL: RGB)
                hha = read_bgr(path, where)[:, :, ::-1].astype(np.float32)
                out.append(_chw(hha - np.asarray(NYUD_HHA_MEAN, np.float32)))
            elif kind == "depth":
                d = _imread(path, cv2.IMREAD_UNCHANGED)
                if d is None:
                    raise DataError(f"{where}: depth image '{path}' cannot be decoded by OpenCV")
                if d.ndim == 3:
                    raise DataError(f"{where}: depth image '{path}' has {d.shape[2]} channels; expected 1")
                with np.errstate(divide="ignore"):
                    out.append((np.log(d.astype(np.float32)) - np.float32(NYUD_LOGD_MEAN))[None])
            else:
                out.append(nyud_label(path, where)[None])
        return out


class PASCALContextSegDataLayer(_FCNSegLayer):
    """PASCAL-Context: VOC2010 images (``voc_dir`` + '/VOC2010') with 59-class labels from ``context_dir``."""

    NAME = "pascalcontext_layers.PASCALContextSegDataLayer"
    REQUIRED = ("voc_dir", "context_dir", "split")
    MEAN = CONTEXT_MEAN

    def configure(self, p):
        self.voc_dir = os.path.join(str(p["voc_dir"]), "VOC2010")
        self.context_dir = str(p["context_dir"])
        self.labels = ContextLabels(self.context_dir)
        self.split_file = os.path.join(self.voc_dir, "ImageSets", "Main", f"{self.split}.txt")

    def files(self, i):
        return [os.path.join(self.voc_dir, "JPEGImages", f"{i}.jpg"),
                os.path.join(self.context_dir, "trainval", f"{i}.mat")]

    def load(self, i, where):
        img, lab = self.files(i)
        return [self._image(img, where), self.labels(lab, where)[None]]


LAYERS: Dict[str, Callable] = {c.NAME: c for c in (VOCSegDataLayer, SBDDSegDataLayer, SIFTFlowSegDataLayer,
                                                     NYUDSegDataLayer, PASCALContextSegDataLayer)}


def register():
    """Put the layers into :data:`netspec.layers.python.BUILTIN` (idempotent; a name already there is kept)."""
    for name, cls in LAYERS.items():
        BUILTIN.setdefault(name, cls)


register()
