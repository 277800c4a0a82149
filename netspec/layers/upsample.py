"""Upsample: SegNet's / ENet's max-unpooling by a pooling argmax mask (``UpsampleParameter``, a netspec schema
extension), as alexgkendall/caffe-segnet src/caffe/layers/upsample_layer.cpp (``LayerSetUp``, ``Reshape``,
``Forward_cpu``, ``Backward_cpu``; TimoSaemann/caffe-enet has the same code).

Bottom 0 is the values, bottom 1 the mask of a MAX ``Pooling`` layer's 2nd top (per channel plane, the flat
index h * W_out + w of the maximum in the pooling input), both N x C x H x W. Each value goes to its index in a
zero N x C x H_out x W_out top; when two values name the same index (overlapping pooling windows) the later
one in the plane's row-major order wins, as the fork's loop. Backward gathers: bottom_diff[i] = top_diff[mask[i]]
for every i (colliding values all receive the gradient of the position, as the fork). The mask gets no diff.
"""
import torch
from torch import nn

from ..errors import LayerError
from ..registry import Export, register
from .base import concrete, example_net, fail


class _Unpool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask, out_h, out_w):
        n, c, h, w = x.shape
        idx = mask.detach().reshape(n * c, h * w).to(torch.int64)  # static_cast<int>: truncation
        if concrete(idx) and idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= out_h * out_w:
                raise LayerError(f"Upsample: mask index {lo if lo < 0 else hi} is outside the {out_h}x{out_w} "
                                 "top; check that the scale / upsample_h / upsample_w settings match the pooling "
                                 "layer that made the mask")
        src = torch.arange(h * w, device=x.device).expand(n * c, h * w)
        winner = torch.full((n * c, out_h * out_w), -1, dtype=torch.int64, device=x.device)
        winner.scatter_reduce_(1, idx, src, "amax")
        flat = x.reshape(n * c, h * w)
        top = torch.where(winner >= 0, flat.gather(1, winner.clamp(min=0)), x.new_zeros(()))
        ctx.save_for_backward(idx)
        ctx.shape = x.shape
        return top.reshape(n, c, out_h, out_w)

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved_tensors
        n, c = ctx.shape[:2]
        gx = g.reshape(n * c, -1).gather(1, idx).reshape(ctx.shape)
        return gx, None, None, None


class Upsample(nn.Module):
    """Max-unpooling to ``size`` (H_out, W_out), or to H * scale_h - pad_out_h by W * scale_w - pad_out_w."""

    def __init__(self, size, scale, pad_out):
        super().__init__()
        self.size, self.scale, self.pad_out = size, scale, pad_out

    def out_size(self, h, w):
        if self.size is not None:
            return self.size
        return h * self.scale[0] - int(self.pad_out[0]), w * self.scale[1] - int(self.pad_out[1])

    def top_shapes(self, bottom_shapes):
        n, c, h, w = bottom_shapes[0]
        return [(n, c) + tuple(self.out_size(h, w))]

    def forward(self, x, mask):
        return _Unpool.apply(x, mask, *self.out_size(*x.shape[-2:]))

    def extra_repr(self):
        if self.size is not None:
            return f"size={self.size}"
        return f"scale={self.scale}, pad_out={self.pad_out}"


@register("Upsample", bottoms=2, tops=1,
          pure=True,
          export=Export(refuse="scatters by a run-time argmax mask with the fork's last-write-wins rule, which "
                               "ONNX's MaxUnpool does not promise"),
          example=example_net("Upsample", "upsample_param { scale: 2 }", inputs=((2, 3, 6, 8),),
                              before='layer { name: "p" type: "Pooling" bottom: "x" top: "p" top: "m" '
                                     'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n',
                              bottoms=("p", "m"), propagate_down=(True, False)))
def upsample(lp, bottom_shapes, ctx):
    """Upsample: bottoms (values, mask), upsample_param upsample_h and upsample_w (both), else scale (2) or
    scale_h and scale_w (both, without scale), each > 1; pad_out_h / pad_out_w (scale 2 only) take one row /
    column off. Output H_out x W_out; rules in the module docstring."""
    p = lp.upsample_param
    has = p.HasField
    if not ((has("upsample_h") and has("upsample_w")) or (not has("scale") and has("scale_h") and has("scale_w"))
            or (not has("scale_h") and not has("scale_w"))):
        raise fail(lp, ctx, "upsample_h & upsample_w are required, else scale OR scale_h & scale_w")
    for i, s in enumerate(bottom_shapes):
        if len(s) != 4:
            raise fail(lp, ctx, f"bottom {i} must have 4 axes (N, C, H, W), got shape {tuple(s)}")
    if tuple(bottom_shapes[0]) != tuple(bottom_shapes[1]):
        raise fail(lp, ctx, f"the mask's shape {tuple(bottom_shapes[1])} differs from the values' "
                            f"{tuple(bottom_shapes[0])}")
    if has("upsample_h") and has("upsample_w"):
        if p.upsample_h <= 1 or p.upsample_w <= 1:
            raise fail(lp, ctx, f"upsample_h and upsample_w must be > 1, got {p.upsample_h} and {p.upsample_w}")
        return Upsample((p.upsample_h, p.upsample_w), None, None)
    scale = (p.scale_h, p.scale_w) if has("scale_h") else (p.scale, p.scale)
    if min(scale) <= 1:
        raise fail(lp, ctx, f"the scale must be > 1, got {scale[0]} x {scale[1]}")
    pad_out = (p.pad_out_h, p.pad_out_w)
    for flag, s, axis in zip(pad_out, scale, "hw"):
        if flag and s != 2:
            raise fail(lp, ctx, f"pad_out_{axis} requires scale_{axis} == 2, got {s}")
    return Upsample(None, scale, pad_out)
