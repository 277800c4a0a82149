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
import struct
import zlib
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from ..data.datum import check_image_file
from ..data.shard import Shard
from ..data.transform import FCN_MEAN
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

VOC_MEAN = FCN_MEAN
SIFTFLOW_MEAN = (114.578, 115.294, 108.353)
NYUD_COLOR_MEAN = (116.190, 97.203, 92.318)
NYUD_HHA_MEAN = (132.431, 94.076, 118.477)
NYUD_LOGD_MEAN = 7.844
CONTEXT_MEAN = (104.007, 116.669, 122.679)
SIFTFLOW_SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"


# -- files ----------------------------------------------------------------------------------------------------

def read_split(path) -> List[Tuple[str, int]]:
    """The ids of a split list (one per line, blank lines skipped) with their 1-based line numbers."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"split list '{path}' not found (working directory {os.getcwd()})") from None
    except OSError as e:
        raise DataError(f"cannot read split list '{path}': {e.strerror}") from None
    ids = [(ln.strip(), i) for i, ln in enumerate(lines, 1) if ln.strip()]
    if not ids:
        raise DataError(f"split list '{path}' lists no ids")
    return ids


def _missing(path: str, where: str) -> DataError:
    return DataError(f"{where}: '{path}' does not exist (working directory {os.getcwd()})")


def _imread(path: str, flags: int):
    """cv2.imread after the header check (decompression bombs: netspec.data.datum.check_image_file), with
    OpenCV's exceptions (its size checks on a corrupt header) read as "cannot decode"."""
    if os.path.isfile(path):
        check_image_file(path, f"image file '{path}'")
    try:
        return cv2.imread(path, flags)
    except cv2.error:
        return None


def read_bgr(path, where: str = "") -> np.ndarray:
    """A colour image as H x W x 3 uint8 BGR (grey images are expanded; EXIF orientation is ignored, as PIL)."""
    path = os.fspath(path)
    img = _imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        if not os.path.exists(path):
            raise _missing(path, where or "image")
        raise DataError(f"{where + ': ' if where else ''}image '{path}' cannot be decoded by OpenCV")
    return img


_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (rows: h x (1 + stride) uint8, first byte = filter type)."""
    h, stride = rows.shape[0], rows.shape[1] - 1
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        f, line = int(rows[y, 0]), rows[y, 1:]
        if f == 0:
            cur = line
        elif f == 2:
            cur = line + prev
        elif f == 1 and bpp == 1:
            cur = np.cumsum(line, dtype=np.uint8)
        elif f in (1, 3, 4):
            raw, up, c = line.tolist(), prev.tolist(), [0] * stride
            for x in range(stride):
                a = c[x - bpp] if x >= bpp else 0
                b = up[x]
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) >> 1
                else:
                    ul = up[x - bpp] if x >= bpp else 0
                    p = a + b - ul
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - ul)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else ul
                c[x] = (raw[x] + pred) & 255
            cur = np.array(c, np.uint8)
        else:
            raise ValueError(f"row {y} has unknown filter type {f}")
        out[y] = cur
        prev = out[y]
    return out


def read_index_png(path, where: str = "") -> np.ndarray:
    """A label PNG as H x W class indices: a palette PNG gives its palette *indices* (as PIL's ``np.array``,
    which OpenCV cannot: it expands palettes to colours), a greyscale PNG its values."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except FileNotFoundError:
        raise _missing(path, where or "label") from None
    pre = f"{where + ': ' if where else ''}label '{path}'"
    if buf[:8] != _PNG_SIG:
        raise DataError(f"{pre} is not a PNG file")
    pos, ihdr, idat = 8, None, []
    while pos + 8 <= len(buf):
        n, typ = struct.unpack(">I4s", buf[pos:pos + 8])
        if typ == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", buf[pos + 8:pos + 21])
        elif typ == b"IDAT":
            idat.append(buf[pos + 8:pos + 8 + n])
        elif typ == b"IEND":
            break
        pos += 12 + n
    if ihdr is None:
        raise DataError(f"{pre} has no IHDR chunk: not a valid PNG")
    w, h, depth, ctype, _, _, interlace = ihdr
    if ctype == 3 and interlace == 0:
        stride = (w * depth + 7) // 8
        try:
            raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
            if raw.size < h * (stride + 1):
                raise ValueError(f"{raw.size} bytes of pixel data, {h * (stride + 1)} expected")
            idx = _unfilter(raw[:h * (stride + 1)].reshape(h, stride + 1), 1)
        except (zlib.error, ValueError) as e:
            raise DataError(f"{pre} is a corrupt PNG: {e}") from None
        if depth < 8:
            per = 8 // depth
            shifts = np.arange(per - 1, -1, -1, dtype=np.uint8) * depth
            idx = ((idx[:, :, None] >> shifts) & ((1 << depth) - 1)).reshape(h, -1)[:, :w]
        return np.ascontiguousarray(idx)
    if ctype == 3:  # interlaced palette PNG: rare; PIL reads those
        try:
            from PIL import Image
        except ImportError:
            raise DataError(f"{pre} is an interlaced palette PNG; reading it needs Pillow (pip install pillow) "
                            "or re-save it without interlacing") from None
        return np.array(Image.open(path))
    img = _imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{pre} cannot be decoded by OpenCV")
    if img.ndim == 3:
        raise DataError(f"{pre} is a {img.shape[2]}-channel colour image; a label PNG holds class indices "
                        "(a palette or greyscale PNG)")
    return img


def load_mat(path, var: str, *fields: str, where: str = "") -> np.ndarray:
    """Variable ``var`` (then struct ``fields``) of a MATLAB file: scipy.io for v5 files, h5py for v7.3."""
    path = os.fspath(path)
    pre = f"{where + ': ' if where else ''}'{path}'"
    if not os.path.exists(path):
        raise _missing(path, where or "MATLAB file")
    try:
        import scipy.io
    except ImportError:
        raise DataError(f"{pre}: reading MATLAB .mat files needs scipy: pip install scipy") from None
    try:
        m = scipy.io.loadmat(path, variable_names=[var])
    except NotImplementedError:  # v7.3 = HDF5; MATLAB stores column-major, hence the transpose
        try:
            import h5py
        except ImportError:
            raise DataError(f"{pre} is a MATLAB v7.3 (HDF5) file; reading it needs h5py: pip install h5py") from None
        with h5py.File(path, "r") as f:
            if var not in f:
                raise DataError(f"{pre} has no variable '{var}' (it has {sorted(f.keys())})") from None
            node = f[var]
            for fld in fields:
                if not hasattr(node, "keys") or fld not in node:
                    raise DataError(f"{pre}: '{var}' has no field '{fld}'") from None
                node = node[fld]
            return np.asarray(node).T
    except Exception as e:
        raise DataError(f"{pre} is not a readable MATLAB file: {e}") from None
    if var not in m:
        try:
            names = [n for n, _, _ in scipy.io.whosmat(path)]
        except Exception:  # pragma: no cover
            names = []
        raise DataError(f"{pre} has no variable '{var}' (it has {names})")
    a = m[var]
    for fld in fields:
        if a.dtype.names is None or fld not in a.dtype.names:
            raise DataError(f"{pre}: '{var}' has no field '{fld}' (fields: {a.dtype.names})")
        a = a[(0,) * a.ndim][fld]
    return np.asarray(a)


def _uint8(a: np.ndarray, path: str, lo: int = 0) -> np.ndarray:
    """Integer labels as uint8, refusing what a uint8 cast would wrap (values < lo, > 255, or fractional)."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise DataError(f"label '{path}' has shape {a.shape}; a 2-D class map is expected")
    if a.dtype != np.uint8:
        if a.size and (a.min() < lo or a.max() > 255):
            raise DataError(f"label '{path}' has values in [{a.min():g}, {a.max():g}], outside [{lo}, 255]")
        if a.dtype.kind == "f" and a.size and not np.array_equal(a, np.round(a)):
            raise DataError(f"label '{path}' has non-integer values")
    return a


# -- labels as the upstream layers produce them (H x W uint8) -------------------------------------------------

def voc_label(path, where: str = "") -> np.ndarray:
    """VOC ``SegmentationClass`` PNG: the palette indices (0 background, 1..20, 255 void)."""
    return read_index_png(path, where).astype(np.uint8)


def sbd_label(path, where: str = "") -> np.ndarray:
    """SBD ``cls/{id}.mat``: ``GTcls.Segmentation`` as uint8."""
    p = os.fspath(path)
    return _uint8(load_mat(p, "GTcls", "Segmentation", where=where), p).astype(np.uint8)


def siftflow_label(path, kind: str, where: str = "") -> np.ndarray:
    """SIFT Flow ``S`` of a semantic or geometric ``.mat``: geometric -1 -> 0, then uint8 minus 1 with wrap
    (0 -> 255 void, k -> k - 1)."""
    p = os.fspath(path)
    s = np.array(load_mat(p, "S", where=where))
    if kind == "geometric":
        s[s == -1] = 0
    elif kind != "semantic":
        raise ValueError(f"unknown SIFT Flow label type {kind!r}: semantic or geometric")
    return _uint8(s, p).astype(np.uint8) - np.uint8(1)


def nyud_label(path, where: str = "") -> np.ndarray:
    """NYUDv2 ``segmentation/img_{id}.mat``: uint8 minus 1 with wrap (void 0 -> 255, class k -> k - 1)."""
    p = os.fspath(path)
    return _uint8(load_mat(p, "segmentation", where=where), p).astype(np.uint8) - np.uint8(1)


class ContextLabels:
    """PASCAL-Context's 459 -> 59 class mapping from ``labels.txt`` (``id: name``) and ``59_labels.txt``.

    ``lut[v]`` is the class of raw label ``v``: k + 1 for the k-th name of 59_labels.txt, 0 otherwise."""

    RENAMES = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}

    def __init__(self, context_dir):
        context_dir = os.fspath(context_dir)
        full: Dict[str, int] = {}
        path = os.path.join(context_dir, "labels.txt")
        for n, line in _lines(path):
            if ":" not in line:
                raise DataError(f"{path}:{n}: expected 'id: name', got {line!r}")
            i, name = line.split(":", 1)
            try:
                full[name.replace(" ", "")] = int(i)
            except ValueError:
                raise DataError(f"{path}:{n}: label id {i!r} is not an integer") from None
        path59 = os.path.join(context_dir, "59_labels.txt")
        self.names: List[str] = []
        self.lut = np.zeros(max(full.values(), default=0) + 1, np.uint8)
        for n, line in _lines(path59):
            name = line.split(":", 1)[-1].replace(" ", "")
            self.names.append(name)
            key = self.RENAMES.get(name, name)
            if key not in full:
                raise DataError(f"{path59}:{n}: class '{name}' is not in {path}")
            self.lut[full[key]] = len(self.names)

    def __call__(self, path, where: str = "") -> np.ndarray:
        p = os.fspath(path)
        m = np.asarray(load_mat(p, "LabelMap", where=where))
        m = np.where((m >= 0) & (m < len(self.lut)), m, 0).astype(np.int64)
        return self.lut[m]


def _lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [(i, ln.strip()) for i, ln in enumerate(f.read().splitlines(), 1) if ln.strip()]
    except FileNotFoundError:
        raise DataError(f"'{path}' not found (working directory {os.getcwd()})") from None


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
        """The sample index and the generator, for exact resume (netspec.train_state)."""
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
