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

_CHUNK = 1 << 23  # sparse-table elements per channel chunk (bounds the memory of large maps)


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


def _log2_floor(n: torch.Tensor) -> torch.Tensor:
    """floor(log2(n)) of positive integers, exactly (counting powers of two, no float log)."""
    k = torch.zeros_like(n)
    p = 2
    while bool((n >= p).any()):
        k += (n >= p).long()
        p *= 2
    return k


def _better(v1, i1, v2, i2):
    """The first maximum in row-major order of two candidates (value, flat index): the larger value, the
    smaller index on a tie."""
    if i1 is None:
        return torch.maximum(v1, v2), None
    take = (v2 > v1) | ((v2 == v1) & (i2 < i1))
    return torch.where(take, v2, v1), torch.where(take, i2, i1)


def _shift_better(v, i, s, dim):
    """Each position against the one ``s`` further along ``dim`` (positions past the end keep their own)."""
    n = v.shape[dim]
    if s >= n:
        return v, i
    a = [slice(None)] * v.dim()
    b = list(a)
    a[dim], b[dim] = slice(0, n - s), slice(s, n)
    pick = (lambda t, sl: None if t is None else t[tuple(sl)])
    v2, i2 = _better(v[tuple(a)], pick(i, a), v[tuple(b)], pick(i, b))
    keep = list(a)
    keep[dim] = slice(n - s, n)
    return (torch.cat([v2, v[tuple(keep)]], dim),
            None if i is None else torch.cat([i2, i[tuple(keep)]], dim))


def _sparse_table(xs, levels_h, levels_w, with_index):
    """2-D sparse table of (c, H, W): entry [kh * levels_w + kw] at (h, w) is the maximum of the 2^kh x 2^kw
    block starting there, as (values, flat indices h * W + w of its first maximum in row-major order, or None),
    each (c, levels * H * W)."""
    c, H, W = xs.shape
    idx = torch.arange(H * W, device=xs.device).reshape(1, H, W).expand(c, H, W) if with_index else None
    tables = {}
    v_w, i_w = xs, idx
    for kw in range(levels_w):
        if kw:
            v_w, i_w = _shift_better(v_w, i_w, 1 << (kw - 1), 2)
        v, i = v_w, i_w
        for kh in range(levels_h):
            if kh:
                v, i = _shift_better(v, i, 1 << (kh - 1), 1)
            tables[kh, kw] = (v, i)
    keys = sorted(tables)  # kh-major, as the query's level kh * levels_w + kw
    V = torch.stack([tables[k][0].reshape(c, H * W) for k in keys], 1).reshape(c, -1)
    I = torch.stack([tables[k][1].reshape(c, H * W) for k in keys], 1).reshape(c, -1) if with_index else None
    return V, I


def _bin_max(x, batch, hs, he, ws, we, want_index):
    """The maximum of each bin (R, C, ph, pw), or with ``want_index`` the flat index h * W + w of its first
    maximum (row-major, as the fork's strict ``>`` scan); garbage for empty bins. Range-maximum queries on a
    sparse table per image and channel chunk: each bin is the union of 4 (overlapping) power-of-two blocks."""
    N, C, H, W = x.shape
    R, PH = hs.shape
    PW = ws.shape[1]
    out = torch.zeros(R, C, PH, PW, dtype=torch.long if want_index else x.dtype, device=x.device)
    if R == 0:
        return out
    dh, dw = (he - hs).clamp(min=1), (we - ws).clamp(min=1)
    lh, lw = _log2_floor(dh), _log2_floor(dw)
    LH, LW = int(lh.max()) + 1, int(lw.max()) + 1
    h0 = hs.clamp(0, H - 1)[:, :, None]
    h1 = (he - (1 << lh)).clamp(0, H - 1)[:, :, None]
    w0 = ws.clamp(0, W - 1)[:, None, :]
    w1 = (we - (1 << lw)).clamp(0, W - 1)[:, None, :]
    base = (lh[:, :, None] * LW + lw[:, None, :]) * (H * W)  # (R, PH, PW)
    corners = [base + hh * W + ww for hh in (h0, h1) for ww in (w0, w1)]
    step = max(1, _CHUNK // (LH * LW * H * W))
    xd = x.detach()
    for n in torch.unique(batch).tolist():
        rows = (batch == n).nonzero()[:, 0]
        pos = [q[rows].reshape(-1) for q in corners]
        for c0 in range(0, C, step):
            V, I = _sparse_table(xd[n, c0:c0 + step], LH, LW, want_index)
            v, i = V[:, pos[0]], None if I is None else I[:, pos[0]]
            for q in pos[1:]:
                v, i = _better(v, i, V[:, q], None if I is None else I[:, q])
            out[rows, c0:c0 + step] = (i if want_index else v).reshape(-1, len(rows), PH, PW).transpose(0, 1)
    return out


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
        if x.requires_grad and torch.is_grad_enabled():
            arg = _bin_max(x, batch, hs, he, ws, we, True)  # (R, C, ph, pw)
            chan = torch.arange(C, device=x.device)[None, :, None, None]
            y = x.flatten(2)[batch[:, None, None, None], chan, arg]  # the gradient goes to each bin's argmax
        else:
            y = _bin_max(x, batch, hs, he, ws, we, False)
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

