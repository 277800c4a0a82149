"""The FCN releases' files, read as their data layers read them (plain numpy and OpenCV; no torch): split lists,
BGR images, palette-index PNGs, MATLAB label files, the per-dataset label conversions and means. The layers that
feed them to a net are in :mod:`netspec.layers.fcn_data` (whose docstring gives the layouts and rules)."""
from __future__ import annotations

import logging
import os
import struct
import zlib
from typing import Dict, List, Tuple

import cv2
import numpy as np

from ..errors import DataError
from .datum import check_image_file
from .transform import FCN_MEAN

log = logging.getLogger("netspec")

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
