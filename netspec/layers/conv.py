"""Convolution, Deconvolution and Im2col (Caffe ``ConvolutionParameter``).

Channels sit on ``axis``; the axes before it are batch axes, the axes after it are spatial (1-D to 3-D).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .fillers import fill_
from .coords import window_map
from ..registry import register
from .base import canonical_axis, example_net, fail

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _per_axis(lp, ctx, name, values, hw, n, default):
    """One value per spatial axis from a repeated field (1 or n values) or its _h/_w pair."""
    h, w = hw
    p = lp.convolution_param
    if p.HasField(h) or p.HasField(w):
        if n != 2:
            raise fail(lp, ctx, f"{h} & {w} can only be used for 2-D convolution, this one has {n} spatial axes")
        if len(values):
            raise fail(lp, ctx, f"either {name} or {h}/{w} should be given, not both")
        return (getattr(p, h), getattr(p, w))
    if len(values) == 0 and default is not None:
        return (default,) * n
    if len(values) not in (1, n):
        raise fail(lp, ctx, f"{name} must be given once, or once per spatial axis "
                            f"({name} given {len(values)} times; {n} spatial axes)")
    return tuple(values) * n if len(values) == 1 else tuple(values)


def _hole(lp, ctx, n: int):
    """DeepLab v1's ``hole`` | ``hole_h``/``hole_w`` (its name for dilation, as deeplab-public's
    ConvolutionLayer::LayerSetUp reads them), or None when none is set."""
    p = lp.convolution_param
    if not (p.HasField("hole") or p.HasField("hole_h") or p.HasField("hole_w")):
        return None
    if p.HasField("hole_h") != p.HasField("hole_w") or (p.HasField("hole") and p.HasField("hole_h")):
        raise fail(lp, ctx, "give hole, or both hole_h and hole_w (DeepLab v1's dilation)")
    if len(p.dilation):
        raise fail(lp, ctx, "hole is DeepLab v1's name for dilation: set one of them, not both")
    if p.HasField("hole_h"):
        if n != 2:
            raise fail(lp, ctx, f"hole_h & hole_w can only be used for 2-D convolution, this one has {n} "
                                "spatial axes")
        return (p.hole_h, p.hole_w)
    return (p.hole,) * n


def conv_geometry(lp, ctx, n: int):
    """(kernel, stride, pad, dilation) tuples of length n, resolved as BaseConvolutionLayer::LayerSetUp."""
    p = lp.convolution_param
    # Caffe's kDefaultStride = 1, kDefaultPad = 0, kDefaultDilation = 1 live in C++, not in caffe.proto.
    kernel = _per_axis(lp, ctx, "kernel_size", p.kernel_size, ("kernel_h", "kernel_w"), n, None)
    stride = _per_axis(lp, ctx, "stride", p.stride, ("stride_h", "stride_w"), n, 1)
    pad = _per_axis(lp, ctx, "pad", p.pad, ("pad_h", "pad_w"), n, 0)
    if len(p.dilation) not in (0, 1, n):
        raise fail(lp, ctx, f"dilation must be given once, or once per spatial axis "
                            f"(given {len(p.dilation)} times; {n} spatial axes)")
    dilation = tuple(p.dilation) * n if len(p.dilation) == 1 else (tuple(p.dilation) or (1,) * n)
    hole = _hole(lp, ctx, n)
    if hole is not None:
        dilation = hole
    for what, vals in (("kernel size", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v <= 0 for v in vals):
            raise fail(lp, ctx, f"{what} must be positive in every spatial axis, got {list(vals)}")
    return kernel, stride, pad, dilation


def _spatial_axes(lp, ctx, bottom_shapes):
    """(channel axis, number of spatial axes) for the first bottom; every bottom must share its shape."""
    shape = tuple(bottom_shapes[0])
    for i, s in enumerate(bottom_shapes[1:], 1):
        if tuple(s) != shape:
            raise fail(lp, ctx, f"all bottoms must have the same shape: bottom 0 is {shape}, bottom {i} is {tuple(s)}")
    axis = canonical_axis(lp, ctx, lp.convolution_param.axis, len(shape))
    n = len(shape) - axis - 1
    if not 1 <= n <= 3:
        raise fail(lp, ctx, f"needs 1 to 3 spatial axes after the channel axis {axis}; "
                            f"bottom shape {shape} has {n}")
    return axis, n


class Convolution(nn.Module):
    """Caffe (de)convolution: F.convNd / F.conv_transposeNd over the axes after ``axis``.

    Weight (num_output, C/group, *k) for convolution, (C, num_output/group, *k) for deconvolution, as
    torch's own layouts; each bottom is convolved with the same weights into its own top.
    """

    def __init__(self, in_channels, num_output, kernel, stride, pad, dilation, group, bias, axis, transposed):
        super().__init__()
        wshape = (in_channels, num_output // group) if transposed else (num_output, in_channels // group)
        self.weight = nn.Parameter(torch.empty(*wshape, *kernel))
        self.bias = nn.Parameter(torch.empty(num_output)) if bias else None
        self.stride, self.padding, self.dilation = stride, pad, dilation
        self.groups, self.axis, self.transposed = group, axis, transposed

    def _conv(self, x):
        w = self.weight
        n = w.dim() - 2
        if self.transposed:
            return _DECONV[n](x, w, self.bias, self.stride, self.padding, 0, self.groups, self.dilation)
        return _CONV[n](x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _one(self, x):
        if self.axis == 1:
            return self._conv(x)
        lead = x.shape[:self.axis]
        y = self._conv(x.reshape(math.prod(lead), *x.shape[self.axis:]))  # (prod(lead), C, *spatial)
        return y.reshape(*lead, *y.shape[1:])

    def forward(self, *xs):
        if len(xs) == 1 and self.axis == 1:  # (the usual case, without the per-bottom loop)
            return self._conv(xs[0])
        ys = tuple(self._one(x) for x in xs)
        return ys if len(ys) > 1 else ys[0]

    def extra_repr(self):
        w = tuple(self.weight.shape)
        return (f"weight={w}, stride={self.stride}, pad={self.padding}, dilation={self.dilation}, "
                f"group={self.groups}, bias={self.bias is not None}, axis={self.axis}")


def _build_conv(lp, bottom_shapes, ctx, transposed):
    p = lp.convolution_param
    if len(lp.bottom) != len(lp.top):
        raise fail(lp, ctx, f"takes one top per bottom, got {len(lp.bottom)} bottoms and {len(lp.top)} tops")
    axis, n = _spatial_axes(lp, ctx, bottom_shapes)
    kernel, stride, pad, dilation = conv_geometry(lp, ctx, n)
    channels = bottom_shapes[0][axis]
    if p.num_output <= 0:
        raise fail(lp, ctx, f"num_output must be positive, got {p.num_output}")
    if p.group <= 0 or channels % p.group or p.num_output % p.group:
        raise fail(lp, ctx, f"group {p.group} must divide both the input channels ({channels}) "
                            f"and num_output ({p.num_output})")
    m = Convolution(channels, p.num_output, kernel, stride, pad, dilation, p.group, p.bias_term, axis, transposed)
    fill_(m.weight, p.weight_filler)
    if m.bias is not None:
        fill_(m.bias, p.bias_filler)
    return m


def _coord(lp, transposed=False):
    """Spatial coordinate map (netspec.authoring.coord_map) from the prototxt fields alone: the DSL has no shapes."""
    cp = lp.convolution_param
    pick = lambda name, values, default: ([getattr(cp, f"{name}_h"), getattr(cp, f"{name}_w")]  # noqa: E731
                                          if cp.HasField(f"{name}_h") else list(values) or default)
    return window_map(cp.axis, pick("kernel", cp.kernel_size, []), pick("stride", cp.stride, [1]),
                      pick("pad", cp.pad, [0]),
                      list(cp.dilation) or pick("hole", [cp.hole] if cp.HasField("hole") else [], [1]),  # DeepLab v1
                      transposed)


def _detail(lp) -> str:
    p = lp.convolution_param
    k = "x".join(map(str, p.kernel_size)) or f"{p.kernel_h}x{p.kernel_w}"
    s = "x".join(map(str, p.stride)) or "1"
    pad = "x".join(map(str, p.pad)) or "0"
    extra = f" dil {'x'.join(map(str, p.dilation))}" if len(p.dilation) else ""
    return f"{p.num_output} k{k} s{s} p{pad}{extra}"


@register("Convolution", bottoms=(1, None), tops=(1, None),
          coord=_coord, detail=_detail,
          pure=True,
          blobs=('weight', 'bias'),
          colour="#FF5050",
          example=example_net("Convolution", "convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: 'xavier' } }"))
def convolution(lp, bottom_shapes, ctx):
    """Convolution: convolution_param num_output, bias_term, kernel_size|kernel_h/w, stride|stride_h/w (1),
    pad|pad_h/w (0), dilation (1), group, axis, weight_filler, bias_filler (absent = constant 0).

    out = (in + 2*pad - (dilation*(k-1)+1)) // stride + 1, per spatial axis (cross-correlation, as torch).
    """
    return _build_conv(lp, bottom_shapes, ctx, transposed=False)


@register("Deconvolution", bottoms=(1, None), tops=(1, None),
          coord=lambda lp: _coord(lp, transposed=True), detail=_detail,
          pure=True,
          blobs=('weight', 'bias'),
          colour="#FF9050",
          example=example_net("Deconvolution", "convolution_param { num_output: 3 kernel_size: 4 stride: 2 weight_filler { type: 'xavier' } }"))
def deconvolution(lp, bottom_shapes, ctx):
    """Deconvolution: the fields of Convolution; weight blob (C_in, num_output/group, *k).

    out = stride*(in - 1) + dilation*(k-1) + 1 - 2*pad (torch's conv_transpose with output_padding 0).
    """
    return _build_conv(lp, bottom_shapes, ctx, transposed=True)


class Im2col(nn.Module):
    """Caffe im2col: (..., C, *spatial) -> (..., C*prod(k), *out), column c*prod(k) + kernel offset."""

    def __init__(self, kernel, stride, pad, dilation, axis):
        super().__init__()
        self.kernel, self.stride, self.pad, self.dilation, self.axis = kernel, stride, pad, dilation, axis

    def forward(self, x):
        lead = x.shape[:self.axis]
        n = len(self.kernel)
        x = x.reshape(math.prod(lead), *x.shape[self.axis:])  # (B, C, *spatial)
        x = F.pad(x, [q for p in reversed(self.pad) for q in (p, p)])
        for i, (k, s, d) in enumerate(zip(self.kernel, self.stride, self.dilation)):
            x = x.unfold(2 + i, d * (k - 1) + 1, s)  # appends a window axis of the dilated extent
        x = x[(Ellipsis,) + tuple(slice(None, None, d) for d in self.dilation)]  # (B, C, *out, *k)
        x = x.permute(0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n))  # (B, C, *k, *out)
        out = x.shape[2 + n:]
        return x.reshape(*lead, -1, *out)

    def extra_repr(self):
        return f"kernel={self.kernel}, stride={self.stride}, pad={self.pad}, dilation={self.dilation}, axis={self.axis}"


@register("Im2col", bottoms=1, tops=1,
          coord=_coord,
          example=example_net("Im2col", 'convolution_param { kernel_size: 3 }'))
def im2col(lp, bottom_shapes, ctx):
    """Im2col: convolution_param kernel_size|kernel_h/w, stride, pad, dilation, axis (num_output unused).

    Top (..., C*prod(k), *out) with the convolution output size; padding reads as zeros.
    """
    axis, n = _spatial_axes(lp, ctx, bottom_shapes)
    return Im2col(*conv_geometry(lp, ctx, n), axis)
