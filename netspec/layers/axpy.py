"""Axpy: SENet's fused channel-wise scale and sum, top = a * x + y (no parameter message).

Followed: hujie-frank/SENet src/caffe/layers/axpy_layer.cpp, AxpyLayer::Reshape, Forward_cpu and
Backward_cpu (d a = sum over H*W of top_diff * x, d x = a * top_diff, d y = top_diff).
"""
import math

from torch import nn

from ..registry import Export, register
from .base import example_net, fail


class Axpy(nn.Module):
    """top[n, c, ...] = a[n, c] * x[n, c, ...] + y[n, c, ...]; a holds N*C scales ((N, C) or (N, C, 1, 1))."""

    def forward(self, a, x, y):
        scale = a.reshape(a.shape[0], a.shape[1], *([1] * (x.dim() - 2)))
        return scale * x + y


@register("Axpy", bottoms=3, tops=1,
          pure=True, coord="identity",
          export=Export(),
          example=example_net("Axpy", inputs=((2, 4, 1, 1), (2, 4, 5, 6), (2, 4, 5, 6)), names=("a", "x", "x2")))
def axpy(lp, bottom_shapes, ctx):
    """Axpy: bottoms a (N, C) or (N, C, 1, 1), x and y (N, C, ...) of one shape; top = a * x + y, shaped as x."""
    a, x, y = (tuple(s) for s in bottom_shapes)
    if len(x) < 2 or len(a) < 2 or a[:2] != x[:2]:
        raise fail(lp, ctx, f"the scale bottom a {a} must start with the (N, C) of x {x}")
    if len(a) == 4 and a[2:] != (1, 1):
        raise fail(lp, ctx, f"a 4-axis scale bottom must be (N, C, 1, 1), got {a}")
    if math.prod(a) != a[0] * a[1]:
        raise fail(lp, ctx, f"the scale bottom a {a} must hold one value per (n, c) of x {x}")
    if x != y:
        raise fail(lp, ctx, f"x {x} and y {y} must have the same shape")
    return Axpy()
