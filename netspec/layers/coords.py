"""Spatial coordinate maps, the part layer builders use (``coord=`` in their registry entries): the map type,
the sliding-window map and the "no map" signal. The walk over a net and the Crop offsets are in
:mod:`netspec.authoring.coord_map`, which builds on this module (kept apart so that layers need not import the walk)."""
from fractions import Fraction
from typing import NamedTuple, Optional, Tuple

from ..errors import NetspecError


class CoordMapError(NetspecError, ValueError):
    """Two blobs have no (croppable) coordinate map between them."""


class _Undefined(Exception):
    """A layer whose spatial map is not known (the walk stops there)."""


def _vec(values) -> Tuple[Fraction, ...]:
    return tuple(Fraction(v) for v in values)


def _broadcast(*vectors):
    n = max(len(v) for v in vectors)
    out = []
    for v in vectors:
        if len(v) not in (1, n):
            raise CoordMapError(f"per-axis values of different lengths: {[list(map(str, v)) for v in vectors]}")
        out.append(v * n if len(v) == 1 else v)
    return out


class CoordMap(NamedTuple):
    """``x -> scale*x + shift`` on the spatial axes from ``axis + 1`` on (``axis`` as Caffe's
    layer ``axis``: 1 for NCHW convolutions); ``axis`` is ``None`` for the identity."""

    axis: Optional[int]
    scale: Tuple[Fraction, ...]
    shift: Tuple[Fraction, ...]

    @classmethod
    def identity(cls) -> "CoordMap":
        return cls(None, (Fraction(1),), (Fraction(0),))

    def after(self, inner: "CoordMap") -> "CoordMap":
        """``self(inner(x))``."""
        if self.axis is None:
            axis = inner.axis
        elif inner.axis is None or inner.axis == self.axis:
            axis = self.axis
        else:
            raise CoordMapError(f"layers map different axes ({inner.axis} and {self.axis})")
        a1, b1, a2, b2 = _broadcast(self.scale, self.shift, inner.scale, inner.shift)
        return CoordMap(axis, tuple(x * y for x, y in zip(a1, a2)),
                        tuple(x * y + z for x, y, z in zip(a1, b2, b1)))

    def inverse(self) -> "CoordMap":
        a, b = _broadcast(self.scale, self.shift)
        return CoordMap(self.axis, tuple(1 / x for x in a), tuple(-y / x for x, y in zip(a, b)))


def _repeated(values, default):
    return list(values) if len(values) else [default]


def undefined(what: str = ""):
    """Raised by a registry ``coord`` function for a layer whose spatial map is not known (the walk stops
    there, e.g. global pooling)."""
    return _Undefined(what)


def window_map(axis: int, kernel, stride, pad, dilation=(1,), transposed: bool = False) -> CoordMap:
    """The map of a sliding window (Convolution, Pooling, Im2col) or, ``transposed``, of its inverse
    (Deconvolution). Per-axis values of length 1 broadcast."""
    if not len(kernel):
        raise CoordMapError("a windowed layer without kernel_size")
    k, s, p, d = _broadcast(_vec(kernel), _vec(stride), _vec(pad), _vec(dilation))
    extent = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    if transposed:
        return CoordMap(axis, s, tuple((ke - 1) / 2 - pi for ke, pi in zip(extent, p)))
    return CoordMap(axis, tuple(1 / x for x in s),
                    tuple((pi - (ke - 1) / 2) / si for pi, ke, si in zip(p, extent, s)))
