"""MatWrite: DeepLab's layer that saves each bottom to a MATLAB .mat file; no tops, no backward.

As deeplab-public-ver2 src/caffe/layers/mat_write_layer.cpp (LayerSetUp, Forward_cpu) and
src/caffe/util/matio_io.cpp (WriteBlobToMat); DeepLab v1 is the same.

mat_write_param: ``prefix`` (required), ``source`` (a list file; the first whitespace-separated token of line k,
minus ``strip`` trailing characters, names forward k), ``period`` (write on every period-th forward, 1).
Forward k writes bottom i to ``prefix + name + "_blob_<i>.mat"``, name = the source's line k, or ``iter_<k>``
without a source. The file (MAT 5, uncompressed) holds one single-precision variable ``data`` of MATLAB size
W x H x C x N (a blob of fewer axes padded with 1s, as Caffe's legacy num/channels/height/width), so
``data(w, h, c, n)`` is the blob's ``[n, c, h, w]``. Written with ``scipy.io.savemat``; without scipy the layer
does nothing and warns once. The prefix's directory must exist (DeepLab's scripts create it).
"""
import logging
import os

import numpy as np
import torch
from torch import nn

from ..errors import LayerError
from ..registry import Export, register
from .base import concrete, fail, ident

log = logging.getLogger("netspec")

_warned_no_scipy = []


def _savemat():
    try:
        from scipy.io import savemat
    except ImportError:
        return None
    return savemat


def blob_to_mat_array(a: np.ndarray) -> np.ndarray:
    """A blob as DeepLab's WriteBlobToMat lays it out: (num, channels, height, width) -> W x H x C x N."""
    if a.ndim > 4:
        raise ValueError(f"a blob of {a.ndim} axes has no num/channels/height/width (at most 4 axes)")
    a = a.reshape(a.shape + (1,) * (4 - a.ndim))
    return np.ascontiguousarray(a, dtype=np.float32).transpose(3, 2, 1, 0)


class MatWrite(nn.Module):
    def __init__(self, name: str, prefix: str, fnames, period: int):
        super().__init__()
        self.name, self.prefix, self.fnames, self.period = name, prefix, fnames, period
        self.iter = 0
        self.savemat = _savemat()
        if self.savemat is None and not _warned_no_scipy:
            _warned_no_scipy.append(True)
            log.warning("%s: scipy is not installed, so MatWrite layers write nothing (pip install scipy)", name)

    def top_shapes(self, bottom_shapes):
        return []

    def file_name(self, k: int, i: int) -> str:
        if self.fnames is None:
            stem = f"iter_{k}"
        elif k < len(self.fnames):
            stem = self.fnames[k]
        else:
            raise LayerError(f"{self.name}: forward {k + 1} but the source lists {len(self.fnames)} names (the "
                             "test has run for more iterations than it was supposed to)")
        return f"{self.prefix}{stem}_blob_{i}.mat"

    @torch.no_grad()
    def forward(self, *bottoms):
        if not all(concrete(b) for b in bottoms):
            return ()
        k = self.iter
        if k % self.period == 0 and self.savemat is not None:
            for i, b in enumerate(bottoms):
                path = self.file_name(k, i)
                d = os.path.dirname(path)
                if d and not os.path.isdir(d):
                    raise LayerError(f"{self.name}: cannot write '{path}': directory '{d}' does not exist "
                                     f"(working directory {os.getcwd()})")
                try:
                    arr = blob_to_mat_array(b.detach().to("cpu", torch.float32).numpy())
                except ValueError as e:
                    raise LayerError(f"{self.name}: bottom {i}: {e}") from None
                self.savemat(path, {"data": arr}, format="5", do_compression=False, oned_as="column")
        self.iter = k + 1
        return ()

    def extra_repr(self):
        n = "none" if self.fnames is None else len(self.fnames)
        return f"prefix={self.prefix!r}, names={n}, period={self.period}"


@register("MatWrite", bottoms=(1, None), tops=0,
          export=Export(refuse="writes files"),
          example="",
          backward=False)
def build_mat_write(lp, bottom_shapes, ctx):
    """MatWrite: mat_write_param prefix, source, strip (0), period (1); see the module docstring."""
    p = lp.mat_write_param
    if not p.HasField("prefix"):
        raise fail(lp, ctx, "mat_write_param.prefix is required")
    if p.period <= 0:
        raise fail(lp, ctx, f"period must be positive, got {p.period}")
    for i, s in enumerate(bottom_shapes):
        if len(s) > 4:
            raise fail(lp, ctx, f"bottom {i} has {len(s)} axes; MatWrite writes blobs of at most 4")
    fnames = None
    if p.HasField("source"):
        if p.strip < 0:
            raise fail(lp, ctx, f"strip cannot be negative, got {p.strip}")
        from .data import resolve_path
        src = resolve_path(p.source, ctx, "mat_write_param.source", ident(lp, ctx))
        if not os.path.isfile(src):
            raise fail(lp, ctx, f"failed to open source file '{src}' (working directory {os.getcwd()})")
        fnames = []
        with open(src, "r", encoding="utf-8", errors="surrogateescape") as f:
            for lineno, line in enumerate(f, 1):
                toks = line.split()
                name = toks[0] if toks else ""
                if len(name) <= p.strip:
                    raise fail(lp, ctx, f"{src}:{lineno}: too much stripping (strip {p.strip} of '{name}')")
                fnames.append(name[:len(name) - p.strip])
        log.info("%s: MatWrite will save a maximum of %d files.", ident(lp, ctx), len(fnames))
    return MatWrite(ident(lp, ctx), p.prefix, fnames, p.period)
