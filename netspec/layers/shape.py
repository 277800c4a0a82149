"""Blob plumbing layers: Input, Split, Concat, Slice, Crop, Flatten, Reshape, Tile, Silence, Parameter,
Filter, BatchReindex (pure data movement, so outputs and gradients equal Caffe's bit for bit).
"""
import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

from ..errors import LayerError, NetspecError
from .coords import CoordMap, undefined
from ..registry import Export, register
from .base import canonical_axis, concrete, example_net, fail, ident, shape_str  # noqa: F401  (re-exported)


# -- Input / Parameter --------------------------------------------------------------------------------------

class Input(nn.Module):
    """Tops fed by the caller; the net never calls forward."""
    is_input = True

    def __init__(self, shapes: List[Tuple[int, ...]]):
        super().__init__()
        self.shapes = shapes

    def top_shapes(self, bottom_shapes):
        return list(self.shapes)

    def forward(self):
        raise NetspecError("Input layers are fed by the net; they have no forward")


@register("Input", bottoms=0, tops=(1, None),
          colour="#DDDDDD",
          example=('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
'layer { name: "t" type: "TanH" bottom: "x" top: "y" }'))
def build_input(lp, bottom_shapes, ctx):
    """Input: input_param.shape given once (all tops) or once per top.

    No shape at all (allowed by Caffe for nets fed from Python) gives 0-axis placeholders: pass the shapes
    when building the net.
    """
    shapes = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
    n = len(lp.top)
    if len(shapes) not in (0, 1, n):
        raise fail(lp, ctx, f"input_param.shape must be given once, once per top blob ({n}), or not at all; "
                      f"got {len(shapes)}")
    if len(shapes) <= 1:
        shapes = shapes * n if shapes else [()] * n
    return Input(shapes)


class Parameter(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))

    def top_shapes(self, bottom_shapes):
        return [tuple(self.weight.shape)]

    def forward(self):
        return self.weight


@register("Parameter", bottoms=0, tops=1,
          blobs=('weight',),
          example=('layer { name: "l" type: "Parameter" top: "y" parameter_param { shape { dim: 3 dim: 2 } } }'))
def build_parameter(lp, bottom_shapes, ctx):
    """Parameter: a learned blob of parameter_param.shape exposed as the top (Caffe initialises it to 0)."""
    return Parameter(tuple(int(d) for d in lp.parameter_param.shape.dim))


# -- Split / Silence ----------------------------------------------------------------------------------------

class Split(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return tuple(x.view_as(x) for _ in range(self.n))  # one autograd node per top; diffs are summed


@register("Split", reshape_like=True, bottoms=1, tops=(1, None),
          pure=True,
          coord="identity",
          colour="#EEEEEE",
          example=example_net("Split", 'top: "z"'))
def build_split(lp, bottom_shapes, ctx):
    """Split: every top is the bottom; the bottom diff is the sum of the top diffs."""
    return Split(len(lp.top))


class Silence(nn.Module):
    def forward(self, *xs):
        return ()


@register("Silence", bottoms=(1, None), tops=0,
          example=('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
'layer { name: "t" type: "TanH" bottom: "x" top: "y" }\n'
'layer { name: "l" type: "Silence" bottom: "x" }'))
def build_silence(lp, bottom_shapes, ctx):
    """Silence: swallows its bottoms (Caffe's backward writes zero diffs; here they get none)."""
    return Silence()


# -- Concat / Slice -----------------------------------------------------------------------------------------

def _legacy_axis(lp, ctx, p, legacy: str, ndim: int) -> int:
    if p.HasField(legacy):
        if p.HasField("axis"):
            raise fail(lp, ctx, f"either axis or {legacy} should be specified, not both")
        v = getattr(p, legacy)
        if v >= ndim:
            raise fail(lp, ctx, f"{legacy} {v} is out of range for a {ndim}-D bottom")
        return v
    return canonical_axis(lp, ctx, p.axis, ndim)


class Concat(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def top_shapes(self, bottom_shapes):
        s = list(bottom_shapes[0])
        s[self.axis] = sum(b[self.axis] for b in bottom_shapes)
        return [tuple(s)]

    def forward(self, *xs):
        return torch.cat(xs, self.axis) if len(xs) > 1 else xs[0].view_as(xs[0])


def _concat_coord(lp):
    if lp.concat_param.axis != 1:
        raise undefined("concatenation along a spatial axis")
    return CoordMap.identity()


@register("Concat", bottoms=(1, None), tops=1,
          coord=_concat_coord,
          pure=True,
          example=('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
'layer { name: "l" type: "Concat" bottom: "x" bottom: "x" top: "y" }'))
def build_concat(lp, bottom_shapes, ctx):
    """Concat along concat_param.axis (default 1; legacy concat_dim). Other axes must agree."""
    s0 = bottom_shapes[0]
    axis = _legacy_axis(lp, ctx, lp.concat_param, "concat_dim", len(s0))
    for b, s in zip(lp.bottom[1:], bottom_shapes[1:]):
        if len(s) != len(s0) or any(a != c for i, (a, c) in enumerate(zip(s0, s)) if i != axis):
            raise fail(lp, ctx, f"all bottoms must have the same shape except at concat axis {axis}: "
                          f"'{lp.bottom[0]}' is {shape_str(s0)}, '{b}' is {shape_str(s)}")
    return Concat(axis)


class Slice(nn.Module):
    def __init__(self, axis: int, points: Sequence[int], n: int):
        super().__init__()
        self.axis, self.points, self.n = axis, list(points), n

    def forward(self, x):
        size = x.shape[self.axis]
        if self.points:
            edges = [0] + self.points + [size]
            sizes = [b - a for a, b in zip(edges, edges[1:])]
        else:
            sizes = [size // self.n] * self.n
        return tuple(torch.split(x, sizes, self.axis))


@register("Slice", bottoms=1, tops=(1, None),
          pure=True,
          example=example_net("Slice", 'top: "z" slice_param { axis: 1 }'))
def build_slice(lp, bottom_shapes, ctx):
    """Slice along slice_param.axis (default 1; legacy slice_dim) at slice_point (one fewer than tops,
    increasing), or into len(top) equal parts when no slice_point is given."""
    s = bottom_shapes[0]
    axis = _legacy_axis(lp, ctx, lp.slice_param, "slice_dim", len(s))
    points, n, size = list(lp.slice_param.slice_point), len(lp.top), s[axis]
    if points:
        if len(points) != n - 1:
            raise fail(lp, ctx, f"{len(points)} slice_point values for {n} tops; give one fewer than the tops")
        if any(b <= a for a, b in zip([0] + points, points + [size])):
            raise fail(lp, ctx, f"slice_point {points} must increase strictly within (0, {size}) "
                          f"(axis {axis} of bottom '{lp.bottom[0]}' {shape_str(s)})")
    elif size % n:
        raise fail(lp, ctx, f"{n} tops do not evenly divide axis {axis} of size {size} "
                      f"(bottom '{lp.bottom[0]}' {shape_str(s)}); give slice_point")
    return Slice(axis, points, n)


# -- Crop ---------------------------------------------------------------------------------------------------

class Crop(nn.Module):
    def __init__(self, axis: int, offsets: Sequence[int], name: str):
        super().__init__()
        self.axis, self.offsets, self.name = axis, list(offsets), name

    def forward(self, x, ref):
        check_crop(self.name, self.axis, self.offsets, tuple(x.shape), tuple(ref.shape))
        for i, off in enumerate(self.offsets):
            x = x.narrow(self.axis + i, off, ref.shape[self.axis + i])
        return x  # a view: the gradient lands in the window, zero elsewhere, none reaches ref


def check_crop(name, axis, offsets, s, r):
    if len(s) != len(r):
        raise LayerError(f"{name}: bottom {shape_str(s)} and reference {shape_str(r)} must have the same "
                         "number of axes")
    for i, off in enumerate(offsets):
        a = axis + i
        if s[a] - off < r[a]:
            raise LayerError(
                f"{name}: the crop for axis {a} is out of bounds: offset {off} + reference size {r[a]} = "
                f"{off + r[a]} > bottom size {s[a]} (bottom {shape_str(s)}, reference {shape_str(r)}, "
                f"axis {axis}, offsets {offsets}). Crop takes the window [offset, offset + reference size) of "
                "each axis from `axis` on; use a larger input or smaller offsets")


class DeployCrop(nn.Module):
    """For export: Caffe Crop as slices whose lengths come from the reference blob (no Python bounds check)."""

    def __init__(self, axis: int, offsets: Sequence[int]):
        super().__init__()
        self.axis, self.offsets = axis, list(offsets)

    def forward(self, x, ref):
        for i, off in enumerate(self.offsets):
            x = x.narrow(self.axis + i, off, ref.shape[self.axis + i])
        return x


@register("Crop", bottoms=2, tops=1,
          detail=lambda lp: f"axis {lp.crop_param.axis} offset {list(lp.crop_param.offset)}",
          export=Export(min_opset=10, needs="Slice with starts/ends given as tensors",
                        deploy=lambda m, dynamic_hw: DeployCrop(m.axis, m.offsets)),
          pure=True,
          colour="#B0C4DE",
          example=('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
'layer { name: "p" type: "Pooling" bottom: "x" top: "r" pooling_param { kernel_size: 2 stride: 2 } }\n'
'layer { name: "l" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 1 } }'))
def build_crop(lp, bottom_shapes, ctx):
    """Crop bottom 0 to the shape of bottom 1 on every axis >= crop_param.axis (default 2), starting at
    offset (one value for all cropped axes, or one per axis; default 0). Top-left anchored; bottom 1 only
    gives the shape and gets no gradient."""
    s, r = bottom_shapes
    if len(s) != len(r):
        raise fail(lp, ctx, f"bottom '{lp.bottom[0]}' {shape_str(s)} and reference '{lp.bottom[1]}' {shape_str(r)} "
                      "must have the same number of axes")
    axis = canonical_axis(lp, ctx, lp.crop_param.axis, len(s))
    given = list(lp.crop_param.offset)
    n = len(s) - axis
    if len(given) > 1 and len(given) != n:
        raise fail(lp, ctx, f"{len(given)} offsets given for {n} cropped axes ({axis}..{len(s) - 1}); give one "
                      "offset for all or one per cropped axis")
    offsets = given * n if len(given) == 1 else (given or [0] * n)
    check_crop(ident(lp, ctx), axis, offsets, tuple(s), tuple(r))
    return Crop(axis, offsets, ident(lp, ctx))


# -- Flatten / Reshape / Tile -------------------------------------------------------------------------------

class Flatten(nn.Module):
    def __init__(self, start: int, end: int):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x):
        return torch.flatten(x, self.start, self.end)


@register("Flatten", bottoms=1, tops=1,
          pure=True,
          example=example_net("Flatten"))
def build_flatten(lp, bottom_shapes, ctx):
    """Flatten axes flatten_param.axis (default 1) .. end_axis (default -1) into one."""
    nd = len(bottom_shapes[0])
    start = canonical_axis(lp, ctx, lp.flatten_param.axis, nd)
    end = canonical_axis(lp, ctx, lp.flatten_param.end_axis, nd, "end_axis")
    if end < start:
        raise fail(lp, ctx, f"end_axis {end} is before axis {start}")
    return Flatten(start, end)


class Reshape(nn.Module):
    def __init__(self, start: int, num_axes: int, dims: Sequence[int]):
        super().__init__()
        self.start, self.num_axes, self.dims = start, num_axes, list(dims)

    def forward(self, x):
        return x.reshape(self.target(list(x.shape)))

    def target(self, s: List[int]) -> List[int]:
        end = len(s) if self.num_axes == -1 else self.start + self.num_axes
        new = [s[self.start + i] if d == 0 else d for i, d in enumerate(self.dims)]  # 0 copies, -1 inferred
        return s[:self.start] + new + s[end:]


@register("Reshape", bottoms=1, tops=1,
          pure=True,
          example=example_net("Reshape", 'reshape_param { shape { dim: 0 dim: -1 } }'))
def build_reshape(lp, bottom_shapes, ctx):
    """Reshape axes [axis, axis + num_axes) (defaults 0, -1 = to the end) to reshape_param.shape, where a
    dim 0 copies the bottom's dim at that position and one dim -1 is inferred from the count."""
    p = lp.reshape_param
    s = list(bottom_shapes[0])
    dims = [int(d) for d in p.shape.dim]
    start = p.axis if p.axis >= 0 else len(s) + p.axis + 1
    if not 0 <= start <= len(s):
        raise fail(lp, ctx, f"axis {p.axis} is out of range for a {len(s)}-D bottom")
    if p.num_axes < -1:
        raise fail(lp, ctx, f"num_axes must be >= 0, or -1 for all; got {p.num_axes}")
    end = len(s) if p.num_axes == -1 else start + p.num_axes
    if end > len(s):
        raise fail(lp, ctx, f"axis {start} + num_axes {p.num_axes} is out of range for a {len(s)}-D bottom")
    if dims.count(-1) > 1:
        raise fail(lp, ctx, f"shape {dims} has several -1 dims; at most one may be inferred")
    if any(d < -1 for d in dims):
        raise fail(lp, ctx, f"shape {dims} has a negative dim other than -1")
    for i, d in enumerate(dims):
        if d == 0 and start + i >= len(s):
            raise fail(lp, ctx, f"shape {dims} has a 0 at position {i} but the bottom {shape_str(s)} has no axis "
                          f"{start + i} to copy")
    module = Reshape(start, p.num_axes, dims)
    t = module.target(s)
    count = math.prod(s)
    if -1 in t:
        known = math.prod(d for d in t if d != -1)
        if known == 0 or count % known:
            raise fail(lp, ctx, f"bottom count {count} {shape_str(s)} must be divisible by the product of the "
                          f"specified dims ({known}) of shape {dims}")
    elif math.prod(t) != count:
        raise fail(lp, ctx, f"output count {math.prod(t)} {shape_str(t)} must match the bottom count {count} "
                      f"{shape_str(s)}")
    return module


class Tile(nn.Module):
    def __init__(self, axis: int, tiles: int):
        super().__init__()
        self.axis, self.tiles = axis, tiles

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return x.repeat(reps)


@register("Tile", bottoms=1, tops=1,
          example=example_net("Tile", 'tile_param { tiles: 2 }'))
def build_tile(lp, bottom_shapes, ctx):
    """Tile: repeat the block of axes [axis, end) tile_param.tiles times along axis (default 1)."""
    p = lp.tile_param
    if not p.HasField("tiles") or p.tiles <= 0:
        raise fail(lp, ctx, "tile_param.tiles must be given and positive")
    return Tile(canonical_axis(lp, ctx, p.axis, len(bottom_shapes[0])), p.tiles)


# -- Filter / BatchReindex ----------------------------------------------------------------------------------

class Filter(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def top_shapes(self, bottom_shapes):
        return [tuple(s) for s in bottom_shapes[:-1]]  # Caffe's first reshape keeps all items

    def forward(self, *xs):
        *data, sel = xs
        idx = torch.nonzero(sel.detach().reshape(sel.shape[0], -1)[:, 0]).reshape(-1)
        return tuple(x.index_select(0, idx) for x in data)


@register("Filter", bottoms=(2, None), tops=(1, None),
          export=Export(refuse='has an output size that depends on the data values'),
          example=('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 6 dim: 4 } shape { dim: 6 } } }\n'
'layer { name: "l" type: "Filter" bottom: "x" bottom: "label" top: "y" propagate_down: true propagate_down: false }'),
          backward=False)
def build_filter(lp, bottom_shapes, ctx):
    """Filter: keep the items (axis 0) of bottoms 0..K-1 whose selector (last bottom, N x 1 ...) is
    non-zero. K tops; no gradient to the selector; unselected items get zero diffs."""
    if len(lp.top) != len(lp.bottom) - 1:
        raise fail(lp, ctx, f"needs one top per filtered bottom: {len(lp.bottom) - 1} bottoms + selector, "
                      f"{len(lp.top)} tops")
    sel = bottom_shapes[-1]
    if any(d != 1 for d in sel[1:]):
        raise fail(lp, ctx, f"selector '{lp.bottom[-1]}' {shape_str(sel)} must be singleton except axis 0")
    for b, s in zip(lp.bottom, bottom_shapes[:-1]):
        if not s or s[0] != sel[0]:
            raise fail(lp, ctx, f"bottom '{b}' {shape_str(s)} must have the selector's axis-0 size {sel[0]}")
    return Filter(len(lp.top))


class BatchReindex(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def top_shapes(self, bottom_shapes):
        x, idx = bottom_shapes
        return [(idx[0],) + tuple(x[1:])]

    def forward(self, x, idx):
        i = idx.detach().long()
        if concrete(i) and i.numel() and (int(i.min()) < 0 or int(i.max()) >= x.shape[0]):
            raise LayerError(f"{self.name}: index values must lie in [0, {x.shape[0]}); got min {int(i.min())}, "
                             f"max {int(i.max())}")
        return x.index_select(0, i)  # backward accumulates repeated indices, as Caffe


@register("BatchReindex", bottoms=2, tops=1,
          export=Export(refuse='gathers by indices fed at run time (no deploy use)'),
          example=('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 6 dim: 4 } shape { dim: 6 } } }\n'
'layer { name: "l" type: "BatchReindex" bottom: "x" bottom: "label" top: "y" propagate_down: true propagate_down: false }'),
          backward=False)
def build_batch_reindex(lp, bottom_shapes, ctx):
    """BatchReindex: top[i] = bottom0[int(bottom1[i])]; bottom 1 is a 1-D index blob."""
    if len(bottom_shapes[1]) != 1:
        raise fail(lp, ctx, f"index bottom '{lp.bottom[1]}' must be 1-D, got {shape_str(bottom_shapes[1])}")
    return BatchReindex(ident(lp, ctx))
