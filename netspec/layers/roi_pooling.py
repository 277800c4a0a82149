"""ROIPooling: Fast/Faster R-CNN's max pooling of regions of interest (``ROIPoolingParameter``, a netspec
schema extension at caffe-fast-rcnn's own number 8266711).

Followed: rbgirshick/caffe-fast-rcnn (branch faster-rcnn) src/caffe/layers/roi_pooling_layer.cpp,
ROIPoolingLayer::Forward_cpu, and roi_pooling_layer.cu, ROIPoolBackward (the fork's CPU Backward is
NOT_IMPLEMENTED; its GPU kernel is the reference for gradients).
"""
import math

import torch
from torch import nn

from ..errors import LayerError
from ..registry import Export, register
from .base import concrete, example_net, fail

_CHUNK = 1 << 24  # elements of the gathered window tensor per ROI chunk (bounds the memory of huge maps)


def c_round(v: torch.Tensor) -> torch.Tensor:
    """C's round(): halves go away from zero (torch.round sends them to the even neighbour)."""
    t = torch.trunc(v)
    return t + torch.sign(v) * ((v - t).abs() >= 0.5).to(v.dtype)


def roi_bins(rois: torch.Tensor, scale: float, ph: int, pw: int, height: int, width: int):
    """Per ROI: batch index, bin starts / ends (clipped to the map) along H (R, ph) and W (R, pw), and
    whether the ROI is degenerate (x2 < x1 or y2 < y1 after scaling), in the fork's float32 arithmetic."""
    r = rois.detach().reshape(rois.shape[0], 5).to(torch.float32)
    batch = r[:, 0].trunc().long()  # static_cast<int>
    xy = c_round(r[:, 1:] * torch.tensor(scale, dtype=torch.float32)).long()
    sw, sh, ew, eh = xy.unbind(1)
    roi_h = torch.clamp(eh - sh + 1, min=1).to(torch.float32)
    roi_w = torch.clamp(ew - sw + 1, min=1).to(torch.float32)

    def edges(size, n, start, limit):
        b = size / torch.tensor(float(n), dtype=torch.float32)  # bin_size, float32
        i = torch.arange(n, dtype=torch.float32, device=size.device)
        lo = torch.floor(i[None, :] * b[:, None]).long() + start[:, None]
        hi = torch.ceil((i[None, :] + 1) * b[:, None]).long() + start[:, None]
        return lo.clamp(0, limit), hi.clamp(0, limit)

    hs, he = edges(roi_h, ph, sh, height)
    ws, we = edges(roi_w, pw, sw, width)
    degenerate = (ew < sw) | (eh < sh)
    return batch, hs, he, ws, we, degenerate


def _window_max(x, start, end, dim):
    """Max of x over the windows [start, end) of axis ``dim`` (3 = W, 2 = H); start/end are (r, n). Returns
    (r, C, ..., n, ...) with the window axis replaced by n bins; the first maximum wins, empty windows give
    -inf."""
    k = max(int((end - start).max()), 1)
    idx = start[:, :, None] + torch.arange(k, device=x.device)  # (r, n, k)
    valid = idx < end[:, :, None]
    idx = idx.clamp(max=x.shape[dim] - 1).clamp(min=0)
    r, n = start.shape
    if dim == 3:
        g = torch.gather(x, 3, idx.reshape(r, 1, 1, n * k).expand(-1, x.shape[1], x.shape[2], -1))
        g = g.reshape(r, x.shape[1], x.shape[2], n, k).masked_fill(~valid[:, None, None], -torch.inf)
        return g.max(-1).values
    g = torch.gather(x, 2, idx.reshape(r, 1, n * k, 1).expand(-1, x.shape[1], -1, x.shape[3]))
    g = g.reshape(r, x.shape[1], n, k, x.shape[3]).masked_fill(~valid[:, None, :, :, None], -torch.inf)
    return g.max(3).values


class ROIPooling(nn.Module):
    """top[r, c, i, j] = max of feature[batch_r, c] over bin (i, j) of ROI r; empty bins give 0.

    ROI r = (batch, x1, y1, x2, y2) in input pixels; cells start = round(x1 * scale), end = round(x2 * scale)
    (C rounding), size = max(end - start + 1, 1); bin i covers [floor(i * size / ph), ceil((i+1) * size / ph))
    + start, clipped to the map. The gradient goes to the first maximum of each bin in row-major order (the
    fork's argmax); as the fork's GPU kernel, ROIs with x2 < x1 or y2 < y1 (after scaling) pass no gradient.
    The rois bottom gets no gradient.
    """

    def __init__(self, pooled_h, pooled_w, spatial_scale, ident=""):
        super().__init__()
        self.pooled_h, self.pooled_w, self.spatial_scale, self.ident = pooled_h, pooled_w, spatial_scale, ident

    def top_shapes(self, bottom_shapes):
        return [(bottom_shapes[1][0], bottom_shapes[0][1], self.pooled_h, self.pooled_w)]

    def forward(self, x, rois):
        N, C, H, W = x.shape
        batch, hs, he, ws, we, degenerate = roi_bins(rois.to(x.device), self.spatial_scale, self.pooled_h,
                                                     self.pooled_w, H, W)
        if concrete(batch) and batch.numel() and (int(batch.min()) < 0 or int(batch.max()) >= N):
            raise LayerError(f"{self.ident}: ROI batch index {int(batch.min())}..{int(batch.max())} outside the "
                             f"{N} images of the feature map (column 0 of the rois bottom)")
        outs = []
        kw = max(int((we - ws).max()), 1) if batch.numel() else 1
        step = max(1, _CHUNK // max(1, C * H * self.pooled_w * kw))
        for s in range(0, batch.numel(), step):
            sl = slice(s, s + step)
            v = _window_max(x[batch[sl]], ws[sl], we[sl], 3)  # (r, C, H, pw)
            v = _window_max(v, hs[sl], he[sl], 2)  # (r, C, ph, pw)
            outs.append(v)
        y = torch.cat(outs) if outs else x.new_zeros((0, C, self.pooled_h, self.pooled_w))
        empty = (he <= hs)[:, :, None] | (we <= ws)[:, None, :]  # (R, ph, pw)
        y = torch.where(empty[:, None], torch.zeros((), dtype=y.dtype, device=y.device), y)
        return torch.where(degenerate[:, None, None, None], y.detach(), y)

    def extra_repr(self):
        return f"pooled=({self.pooled_h}, {self.pooled_w}), spatial_scale={self.spatial_scale}"


@register("ROIPooling", bottoms=2, tops=1,
          pure=True,
          export=Export(refuse="has no ONNX exporter: ONNX MaxRoiPool's bin rounding is not the fork's"),
          example=example_net("ROIPooling", "roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 0.5 }",
                              bottoms=("x", "rois"),
                              before='layer { name: "r" type: "DummyData" top: "rois" dummy_data_param { '
                                     'shape { dim: 3 dim: 5 } data_filler { type: "uniform" min: 0 max: 1.99 } } }\n'))
def roi_pooling(lp, bottom_shapes, ctx):
    """ROIPooling: roi_pooling_param pooled_h, pooled_w (both > 0), spatial_scale (1). Bottoms: feature map
    (N, C, H, W) and rois (R, 5) = (batch index, x1, y1, x2, y2) in input pixels; top (R, C, pooled_h, pooled_w).
    """
    p = lp.roi_pooling_param
    if p.pooled_h <= 0 or p.pooled_w <= 0:
        raise fail(lp, ctx, f"pooled_h and pooled_w must be > 0, got {p.pooled_h} and {p.pooled_w}")
    feat, rois = (tuple(s) for s in bottom_shapes)
    if len(feat) != 4:
        raise fail(lp, ctx, f"bottom 0 must be a feature map (N, C, H, W), got shape {feat}")
    if len(rois) < 2 or math.prod(rois[1:]) != 5:
        raise fail(lp, ctx, f"bottom 1 must hold rois (R, 5) = (batch index, x1, y1, x2, y2), got shape {rois}")
    return ROIPooling(p.pooled_h, p.pooled_w, p.spatial_scale, f"{ctx.where}layer '{lp.name}' (ROIPooling)")

