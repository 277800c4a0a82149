"""Spatial coordinate maps between blobs, and Crop layers whose offsets come from the graph.

Every spatial layer maps a coordinate ``x`` of its bottom to ``a*x + b`` in its top (per spatial
axis), taking a window's centre as its position:

* Convolution / Pooling (kernel ``k``, stride ``s``, pad ``p``, dilation ``d``; extent
  ``ke = d*(k-1) + 1``): ``a = 1/s``, ``b = (p - (ke-1)/2) / s``
* Deconvolution: the inverse, ``a = s``, ``b = (ke-1)/2 - p``
* Crop (offset ``o``): ``a = 1``, ``b = -o``
* element-wise layers (ReLU, Dropout, Eltwise, Scale, BatchNorm, Concat on channels ...):
  identity.

Maps compose along the graph. :func:`coord_map_from_to` walks back from two blobs to a common
ancestor and returns the map from the first to the second; :func:`crop` turns it into a Crop
layer: the two blobs must have the same scale (``a == 1``) and the first must extend past the
second (``b <= 0``), and the offset is ``-b``. This is how Caffe's ``coord_map.crop`` derives
FCN's offsets (19; 5/27; 5/9/31) and what Dilated FCN-2s' hand-set offsets (5/9/17/33/34) are.
Pooling's ceil rounding does not enter the map (it only adds pixels at the far end).

All arithmetic is exact (``fractions.Fraction``), so a non-integer offset is reported as such.
:func:`check_crops` recomputes the offsets of every Crop layer of a ``NetParameter``, to
validate hand-written prototxts.
"""
from collections import deque
from fractions import Fraction
from typing import Dict, List, NamedTuple, Optional, Tuple

from . import dsl
from .. import layers as _layers  # noqa: F401  (the registry's entries)
from ..layers.coords import CoordMap, CoordMapError, _repeated, _Undefined, _vec, undefined, window_map  # noqa: F401
from ..registry import LAYERS

__all__ = ["CoordMap", "CoordMapError", "coord_map", "coord_map_from_to", "crop", "crop_offsets",
           "check_crops", "CropCheck", "window_map", "undefined"]


def coord_map(fn) -> CoordMap:
    """The map from bottom 0 to top coordinates of one layer (a :class:`netspec.authoring.dsl.Function`).

    Raises :class:`CoordMapError` for layers without a spatial map (InnerProduct, Reshape, ...).
    """
    try:
        return _layer_map(fn)
    except _Undefined:
        raise CoordMapError(f"no coordinate map for a {fn.type_name} layer") from None


def _layer_map(fn) -> CoordMap:
    """The layer's own map: Crop's here (this module's subject), every other type's from its registry entry
    (``coord="identity"`` or a function of the LayerParameter built on :func:`window_map`)."""
    if fn.type_name == "Crop":
        cp = fn.param_proto.crop_param
        axis = cp.axis if cp.axis >= 0 else cp.axis + 4  # NCHW assumed for a negative axis
        offset = _vec(_repeated(cp.offset, 0))
        return CoordMap(axis - 1, (Fraction(1),), tuple(-o for o in offset))
    entry = LAYERS.find(fn.type_name)
    if entry is None or entry.coord is None:
        raise _Undefined
    return CoordMap.identity() if entry.coord == "identity" else entry.coord(fn.param_proto)


def _spatial_bottoms(top) -> tuple:
    fn = top.fn
    # A Crop's second bottom only gives the size; its coordinates come from the first.
    return fn.inputs[:1] if fn.type_name == "Crop" else fn.inputs


def _ancestors(top) -> Dict[object, CoordMap]:
    """For ``top`` and every blob it derives from through mapped layers: the map from that
    blob's coordinates to ``top``'s, nearest first."""
    maps = {top: CoordMap.identity()}
    queue = deque([top])
    while queue:
        t = queue.popleft()
        try:
            layer = _layer_map(t.fn)
        except _Undefined:
            continue
        for b in _spatial_bottoms(t):
            if b not in maps:
                maps[b] = maps[t].after(layer)
                queue.append(b)
    return maps


def coord_map_from_to(top_from, top_to) -> CoordMap:
    """The map from ``top_from``'s coordinates to ``top_to``'s, through a common ancestor."""
    from_maps = _ancestors(top_from)
    to_maps = _ancestors(top_to)
    for blob, to_map in to_maps.items():  # nearest ancestors of top_to first
        if blob in from_maps:
            return to_map.after(from_maps[blob].inverse())
    raise CoordMapError("the two blobs have no common ancestor through spatial layers "
                        "(Convolution, Pooling, Deconvolution, Crop, element-wise layers)")


def crop_offsets(top_from, top_to) -> Tuple[int, List[int]]:
    """``(axis, offsets)`` of the Crop that aligns ``top_from`` with ``top_to``.

    One offset when every spatial axis has the same one (as Caffe's FCN prototxts), else one per
    axis. Raises :class:`CoordMapError` when the blobs differ in scale, when ``top_from`` does not
    cover ``top_to`` (negative offset) or when the offset is fractional.
    """
    m = coord_map_from_to(top_from, top_to)
    if any(a != 1 for a in m.scale):
        raise CoordMapError(f"cannot crop: the blobs are at different scales (scale "
                            f"{', '.join(map(str, m.scale))}); upsample first")
    if any(b > 0 for b in m.shift):
        raise CoordMapError(f"cannot crop: the blob to crop starts inside the reference (offset "
                            f"{', '.join(str(-b) for b in m.shift)} is negative); pad it more")
    if any(b.denominator != 1 for b in m.shift):
        raise CoordMapError(f"cannot crop: the offset is not an integer "
                            f"({', '.join(str(-b) for b in m.shift)}); the blobs are misaligned by "
                            "a fraction of a pixel")
    offsets = [int(-b) for b in m.shift]
    if len(set(offsets)) == 1:
        offsets = offsets[:1]
    axis = 2 if m.axis is None else m.axis + 1
    return axis, offsets


def crop(top_from, top_to, **kwargs):
    """``L.Crop(top_from, top_to)`` with ``crop_param{axis offset}`` computed from the graph.

    Extra keywords go to the layer (``name="Cropping"``)."""
    axis, offsets = crop_offsets(top_from, top_to)
    offset = offsets[0] if len(offsets) == 1 else offsets
    return dsl.layers.Crop(top_from, top_to, crop_param=dict(axis=axis, offset=offset), **kwargs)


# ------------------------------------------------------------------------------------------------
# Checking the crops of a prototxt


class CropCheck(NamedTuple):
    index: int
    name: str
    given: Tuple[int, List[int]]
    computed: Optional[Tuple[int, List[int]]]
    error: Optional[str]

    @property
    def ok(self) -> bool:
        if self.computed is None:
            return False
        (ga, go), (ca, co) = self.given, self.computed
        n = max(len(go), len(co))
        go = go * n if len(go) == 1 else go
        co = co * n if len(co) == 1 else co
        return ga == ca and go == co


def check_crops(net, phase: Optional[int] = None) -> List[CropCheck]:
    """Recompute the offset of every Crop layer of ``net`` (a ``NetParameter``) from the graph.

    Returns one :class:`CropCheck` per Crop layer: the ``(axis, offsets)`` given in the file, the
    ones the coordinate maps imply (``None`` with ``error`` set when they cannot be computed).
    ``phase`` drops layers that the include/exclude rules leave out of that phase.
    """
    current: Dict[str, object] = {}
    out = []
    for i, lp in enumerate(net.layer):
        if phase is not None and not _in_phase(lp, phase):
            continue
        inputs = [current[b] for b in lp.bottom if b in current]
        if len(inputs) != len(lp.bottom):
            missing = [b for b in lp.bottom if b not in current]
            raise CoordMapError(f"layer '{lp.name}' reads {missing}, which no earlier layer makes")
        fn = dsl.Function.from_layer(lp, inputs)
        if lp.type == "Crop":
            cp = lp.crop_param
            given = (cp.axis, list(cp.offset) or [0])
            try:
                computed, error = crop_offsets(inputs[0], inputs[1]), None
            except CoordMapError as e:
                computed, error = None, str(e)
            out.append(CropCheck(i, lp.name, given, computed, error))
        for name, top in zip(lp.top, fn.tops):
            current[name] = top
    return out


def _in_phase(lp, phase: int) -> bool:
    if lp.include:
        return any(not r.HasField("phase") or r.phase == phase for r in lp.include)
    return not any(r.HasField("phase") and r.phase == phase for r in lp.exclude)
