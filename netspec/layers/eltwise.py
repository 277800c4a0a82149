"""Element-wise and broadcasting arithmetic: Eltwise, Scale, Bias, Reduction, Softmax, ArgMax.
Scale and Bias lay their blob over ``bottom.shape[axis : axis + blob.ndim]`` as Caffe does (no numpy-style
right alignment)."""
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import LayerError
from .fillers import fill_
from ..registry import Export, register
from .base import canonical_axis, example_net, fail, ident, shape_str


# -- Eltwise ------------------------------------------------------------------------------------------------

class _ProdUnstable(torch.autograd.Function):
    """PROD with stable_prod_grad false: d/dx_i = top / x_i * dtop (inf/nan where x_i == 0, as Caffe)."""

    @staticmethod
    def forward(ctx, *xs):
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        ctx.save_for_backward(y, *xs)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, *xs = ctx.saved_tensors
        return tuple(y / x * dy for x in xs)


class _Max(torch.autograd.Function):
    """MAX as Caffe's loop: bottom 1 wins a tie with bottom 0 (``a > b ? a : b``), a later bottom only when
    strictly greater; the whole gradient goes to the bottom so chosen."""

    @staticmethod
    def forward(ctx, *xs):
        take = xs[1] >= xs[0]
        y = torch.where(take, xs[1], xs[0])
        arg = take.to(torch.uint8)
        for k, x in enumerate(xs[2:], start=2):
            take = x > y
            y = torch.where(take, x, y)
            arg = torch.where(take, torch.full_like(arg, k), arg)
        ctx.save_for_backward(arg)
        ctx.n = len(xs)
        return y

    @staticmethod
    def backward(ctx, dy):
        (arg,) = ctx.saved_tensors
        zero = torch.zeros_like(dy)
        return tuple(torch.where(arg == k, dy, zero) for k in range(ctx.n))


class Eltwise(nn.Module):
    def __init__(self, op: str, coeffs: Sequence[float], stable: bool, name: str):
        super().__init__()
        self.op, self.coeffs, self.stable, self.name = op, list(coeffs), stable, name

    def forward(self, *xs):
        for i, x in enumerate(xs[1:], start=1):
            if x.shape != xs[0].shape:
                raise LayerError(f"{self.name}: bottom 0 is {shape_str(xs[0].shape)} but bottom {i} is "
                                 f"{shape_str(x.shape)}; Eltwise needs equal shapes")
        if self.op == "SUM":
            y = None
            for c, x in zip(self.coeffs, xs):
                t = x if c == 1 else x * c
                y = t if y is None else y + t
            return y
        if self.op == "MAX":
            return _Max.apply(*xs)
        if not self.stable:
            return _ProdUnstable.apply(*xs)
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        return y


class DeployEltwise(nn.Module):
    """For export: Caffe Eltwise forward without the custom autograd Functions (TorchScript cannot save those); the
    values are the same (MAX ties pick equal values)."""

    def __init__(self, op: str, coeffs: Sequence[float]):
        super().__init__()
        self.op, self.coeffs = op, list(coeffs)

    def forward(self, *xs):
        y = xs[0] * self.coeffs[0] if self.op == "SUM" and self.coeffs[0] != 1 else xs[0]
        for i, x in enumerate(xs[1:], start=1):
            if self.op == "SUM":
                y = y + (x if self.coeffs[i] == 1 else x * self.coeffs[i])
            elif self.op == "MAX":
                y = torch.maximum(y, x)
            else:
                y = y * x
        return y


@register("Eltwise", reshape_like=True, bottoms=(2, None), tops=1,
          detail=lambda lp: lp.eltwise_param.EltwiseOp.Name(lp.eltwise_param.operation),
          export=Export(deploy=lambda m, dynamic_hw: DeployEltwise(m.op, m.coeffs)),
          pure=True,
          coord="identity",
          colour="#B0C4DE",
          example=('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
'layer { name: "l" type: "Eltwise" bottom: "x" bottom: "x" top: "y" eltwise_param { operation: PROD } }'))
def build_eltwise(lp, bottom_shapes, ctx):
    """Eltwise over equally shaped bottoms; eltwise_param.operation (default SUM):
    SUM y = sum_i coeff_i * x_i (coeff: none = all 1, or one per bottom);
    PROD y = prod_i x_i, gradient prod_{j!=i} x_j * dy, or top / x_i * dy when stable_prod_grad is false;
    MAX y = max_i x_i, the gradient routed to one arg-max bottom (bottom 1 wins a 0/1 tie, else the first).
    """
    p = lp.eltwise_param
    op = p.EltwiseOp.Name(p.operation)
    n = len(lp.bottom)
    if p.coeff and len(p.coeff) != n:
        raise fail(lp, ctx, f"{len(p.coeff)} coeff values for {n} bottoms; give one per bottom blob")
    if p.coeff and op == "PROD":
        raise fail(lp, ctx, "coeff is only allowed for operation SUM")
    for b, s in zip(lp.bottom[1:], bottom_shapes[1:]):
        if tuple(s) != tuple(bottom_shapes[0]):
            raise fail(lp, ctx, f"bottom '{lp.bottom[0]}' is {shape_str(bottom_shapes[0])} but '{b}' is "
                          f"{shape_str(s)}; Eltwise needs equal shapes")
    return Eltwise(op, list(p.coeff) or [1.0] * n, p.stable_prod_grad, ident(lp, ctx))


# -- Scale / Bias -------------------------------------------------------------------------------------------

def _broadcast(v: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    return v.reshape((1,) * axis + tuple(v.shape) + (1,) * (ndim - axis - v.dim()))


class Affine(nn.Module):
    """y = x * s + b with s, b laid over axes [axis, axis + s.ndim); s and b learned or given as bottom 1."""

    def __init__(self, axis: int, name: str, weight_shape=None, bias_shape=None):
        super().__init__()
        self.axis, self.name = axis, name
        self.weight = nn.Parameter(torch.empty(weight_shape)) if weight_shape is not None else None
        self.bias = nn.Parameter(torch.empty(bias_shape)) if bias_shape is not None else None

    def _check(self, x, v):
        axis = 0 if v.dim() == 0 else self.axis
        if tuple(x.shape[axis:axis + v.dim()]) != tuple(v.shape) or axis + v.dim() > x.dim():
            raise LayerError(f"{self.name}: blob {shape_str(v.shape)} does not match bottom {shape_str(x.shape)} "
                             f"at axes {axis}..{axis + v.dim() - 1}")
        return axis


class Scale(Affine):
    def forward(self, x, s=None):
        s = self.weight if s is None else s
        axis = self._check(x, s)
        y = x * _broadcast(s, axis, x.dim())
        if self.bias is not None:
            y = y + _broadcast(self.bias, axis, x.dim())
        return y


class Bias(Affine):
    def forward(self, x, b=None):
        b = self.bias if b is None else b
        return x + _broadcast(b, self._check(x, b), x.dim())


def _param_shape(lp, ctx, p, bottom_shapes):
    """Caffe's scale/bias blob shape: bottom 1's shape, or bottom0.shape[axis : axis + num_axes]."""
    s = tuple(bottom_shapes[0])
    axis = canonical_axis(lp, ctx, p.axis, len(s)) if s else 0
    if len(bottom_shapes) > 1:
        v = tuple(bottom_shapes[1])
    else:
        if p.num_axes < -1:
            raise fail(lp, ctx, f"num_axes must be non-negative, or -1 to extend to the end; got {p.num_axes}")
        end = len(s) if p.num_axes == -1 else axis + p.num_axes
        if end > len(s):
            raise fail(lp, ctx, f"the blob's axes {axis}..{end - 1} (axis {axis}, num_axes {p.num_axes}) extend past "
                          f"bottom '{lp.bottom[0]}' {shape_str(s)}")
        v = s[axis:end]
    a = 0 if not v else axis
    if s[a:a + len(v)] != v:
        raise fail(lp, ctx, f"'{lp.bottom[1]}' {shape_str(v)} does not match bottom '{lp.bottom[0]}' {shape_str(s)} "
                      f"at axes {a}..{a + len(v) - 1} (axis {axis})")
    return axis, v


@register("Scale", reshape_like=True, blobs=lambda lp: ("bias",) if len(lp.bottom) > 1 else ("weight", "bias"), bottoms=(1, 2), tops=1,
          pure=True,
          coord="identity",
          example=example_net("Scale", 'scale_param { bias_term: true }'))
def build_scale(lp, bottom_shapes, ctx):
    """Scale: y = x * s (+ b when scale_param.bias_term), s and b broadcast over axes [axis, axis + s.ndim).
    One bottom: s is learned, shape bottom.shape[axis : axis + num_axes] (defaults 1, 1), filled with
    scale_param.filler or constant 1 when absent. Two bottoms: s is bottom 1 (num_axes ignored).
    b has s's shape, filled with bias_filler (absent: constant 0). Blobs: [s, b] or [b]."""
    p = lp.scale_param
    axis, v = _param_shape(lp, ctx, p, bottom_shapes)
    m = Scale(axis, ident(lp, ctx), weight_shape=v if len(bottom_shapes) == 1 else None,
              bias_shape=v if p.bias_term else None)
    if m.weight is not None:
        filler = p.filler
        if not p.HasField("filler"):
            filler = type(p.filler)(type="constant", value=1.0)  # ScaleLayer's own default
        fill_(m.weight, filler)
    if m.bias is not None:
        fill_(m.bias, p.bias_filler)
    return m


@register("Bias", reshape_like=True, bottoms=(1, 2), tops=1,
          pure=True,
          coord="identity",
          blobs=('bias',),
          example=example_net("Bias"))
def build_bias(lp, bottom_shapes, ctx):
    """Bias: y = x + b, b broadcast over axes [axis, axis + b.ndim) as Scale; learned (bias_param.filler,
    absent: constant 0) with shape bottom.shape[axis : axis + num_axes], or given as bottom 1."""
    p = lp.bias_param
    axis, v = _param_shape(lp, ctx, p, bottom_shapes)
    m = Bias(axis, ident(lp, ctx), bias_shape=v if len(bottom_shapes) == 1 else None)
    if m.bias is not None:
        fill_(m.bias, p.filler)
    return m


# -- Reduction / Softmax ------------------------------------------------------------------------------------

class Reduction(nn.Module):
    def __init__(self, op: str, axis: int, coeff: float):
        super().__init__()
        self.op, self.axis, self.coeff = op, axis, coeff

    def forward(self, x):
        v = x.reshape(tuple(x.shape[:self.axis]) + (-1,))  # (outer..., dim)
        if self.op == "ASUM":
            y = v.abs().sum(-1)
        elif self.op == "SUMSQ":
            y = (v * v).sum(-1)
        else:
            y = v.sum(-1)
        coeff = self.coeff / v.shape[-1] if self.op == "MEAN" else self.coeff
        return y if coeff == 1 else y * coeff


@register("Reduction", bottoms=1, tops=1,
          export=Export(min_opset=13, needs='ReduceSum with axes as an input'),
          example=example_net("Reduction", 'reduction_param { operation: SUMSQ axis: 1 }'))
def build_reduction(lp, bottom_shapes, ctx):
    """Reduction over all axes from reduction_param.axis (default 0) on; top shape = bottom.shape[:axis].
    operation SUM / ASUM (sum |x|) / SUMSQ (sum x^2) / MEAN, times coeff (default 1)."""
    p = lp.reduction_param
    nd = len(bottom_shapes[0])
    return Reduction(p.ReductionOp.Name(p.operation), canonical_axis(lp, ctx, p.axis, nd), p.coeff)


class Softmax(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return torch.softmax(x, self.axis)


@register("Softmax", reshape_like=True, bottoms=1, tops=1,
          pure=True,
          coord="identity",
          export=Export(min_opset=13, needs='Softmax over one axis (opset < 13 flattens to 2-D)'),
          example=example_net("Softmax"))
def build_softmax(lp, bottom_shapes, ctx):
    """Softmax along softmax_param.axis (default 1)."""
    return Softmax(canonical_axis(lp, ctx, lp.softmax_param.axis, len(bottom_shapes[0])))


# -- ArgMax -------------------------------------------------------------------------------------------------

def caffe_topk(v: torch.Tensor, k: int):
    """Top k along the last axis in the order of std::partial_sort with greater<pair<value, index>>:
    by value descending, ties by the HIGHER index first. Returns (values, indices)."""
    d = v.shape[-1]
    vals, idx = torch.sort(v.flip(-1), dim=-1, descending=True, stable=True)
    return vals[..., :k], (d - 1) - idx[..., :k]


class ArgMax(nn.Module):
    def __init__(self, axis: Optional[int], top_k: int, out_max_val: bool):
        super().__init__()
        self.axis, self.top_k, self.out_max_val = axis, top_k, out_max_val

    def forward(self, x):
        x = x.detach()  # Caffe's ArgMax has no backward
        if self.axis is not None:
            vals, idx = caffe_topk(x.movedim(self.axis, -1), self.top_k)
            out = vals if self.out_max_val else idx.to(x.dtype)
            return out.movedim(-1, self.axis)
        vals, idx = caffe_topk(x.reshape(x.shape[0], -1), self.top_k)  # (N, k)
        out = torch.stack([idx.to(x.dtype), vals], 1) if self.out_max_val else idx.to(x.dtype)[:, None]
        return out.reshape(out.shape + (1,) * (x.dim() - 3))  # (N, 1 or 2, k, 1, ...)


class DeployArgMax(nn.Module):
    """For export: Caffe ArgMax with ``topk`` on the reversed axis instead of a stable sort (ONNX has no stable sort):
    ONNX TopK puts the lower index first among equal values, i.e. the higher original index, as Caffe's
    ``partial_sort`` with ``greater<pair<value, index>>`` does."""

    def __init__(self, m):
        super().__init__()
        self.axis, self.top_k, self.out_max_val = m.axis, m.top_k, m.out_max_val

    @staticmethod
    def _topk(v, k):
        vals, idx = torch.topk(v.flip(-1), k, dim=-1, largest=True, sorted=True)
        return vals, (v.shape[-1] - 1) - idx

    def forward(self, x):
        if self.axis is not None:
            vals, idx = self._topk(x.movedim(self.axis, -1), self.top_k)
            out = vals if self.out_max_val else idx.to(x.dtype)
            return out.movedim(-1, self.axis)
        vals, idx = self._topk(x.reshape(x.shape[0], -1), self.top_k)
        out = torch.stack([idx.to(x.dtype), vals], 1) if self.out_max_val else idx.to(x.dtype)[:, None]
        return out.reshape(out.shape + (1,) * (x.dim() - 3))


@register("ArgMax", bottoms=1, tops=1,
          export=Export(min_opset=11, needs='TopK with a tensor k and largest/sorted attributes',
                        deploy=lambda m, dynamic_hw: DeployArgMax(m)),
          example=example_net("ArgMax", 'argmax_param { axis: 1 }'),
          backward=False)
def build_argmax(lp, bottom_shapes, ctx):
    """ArgMax (no backward): argmax_param.top_k (default 1) indices, or with out_max_val the values.
    With axis: along that axis (top shape = bottom with shape[axis] = top_k; out_max_val gives values only).
    Without axis: per item over all of C*H*W, top N x 1 x top_k (x 1...), or N x 2 x top_k with out_max_val
    (indices then values). Ties: higher index first, as Caffe's partial_sort over (value, index) pairs."""
    p = lp.argmax_param
    s = bottom_shapes[0]
    if p.top_k < 1:
        raise fail(lp, ctx, "top_k must be at least 1")
    axis = canonical_axis(lp, ctx, p.axis, len(s)) if p.HasField("axis") else None
    size = s[axis] if axis is not None else int(torch.Size(s[1:]).numel())
    if p.top_k > size:
        raise fail(lp, ctx, f"top_k {p.top_k} exceeds the {size} values to choose from in bottom {shape_str(s)}")
    return ArgMax(axis, p.top_k, p.out_max_val)
