"""Faster R-CNN's region proposals: py-faster-rcnn's ``Python`` layer ``rpn.proposal_layer.ProposalLayer``,
served built in (no py-faster-rcnn checkout, no code import), and the ``Proposal`` type of C++ ports and
OpenCV (``ProposalParameter``, a netspec schema extension).

Followed: rbgirshick/py-faster-rcnn lib/rpn/proposal_layer.py (ProposalLayer.setup / forward,
_filter_boxes), lib/rpn/generate_anchors.py, lib/fast_rcnn/bbox_transform.py (bbox_transform_inv,
clip_boxes), lib/fast_rcnn/config.py (__C.TRAIN / __C.TEST RPN_* values) and lib/nms/nms_kernel.cu (the
default GPU NMS: IoU with +1 pixel extents, a box is suppressed when its IoU with a kept box is > the
threshold). Arithmetic in float32 as the Python layer's blobs.
"""
import ast

import numpy as np
import torch
from torch import nn

from ..errors import LayerError
from ..proto import caffe_pb2
from ..registry import Export, register
from .base import example_net, fail
from .python import BUILTIN, Layer

#: lib/fast_rcnn/config.py: (RPN_PRE_NMS_TOP_N, RPN_POST_NMS_TOP_N, RPN_NMS_THRESH, RPN_MIN_SIZE) per phase.
RPN_CONFIG = {caffe_pb2.TRAIN: (12000, 2000, 0.7, 16), caffe_pb2.TEST: (6000, 300, 0.7, 16)}


def generate_anchors(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32)) -> np.ndarray:
    """(len(ratios) * len(scales), 4) anchors (x1, y1, x2, y2) around the (0, 0, base-1, base-1) window: per
    ratio (rounded widths / heights of the same area, numpy's round), each scale; as generate_anchors.py."""
    def whctr(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def boxes(ws, hs, cx, cy):
        ws, hs = np.asarray(ws, float)[:, None], np.asarray(hs, float)[:, None]
        return np.hstack((cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)))

    w, h, cx, cy = whctr(np.array([0, 0, base_size - 1, base_size - 1], float))
    ratios, scales = np.asarray(ratios, float), np.asarray(scales, float)
    ws = np.round(np.sqrt(w * h / ratios))
    per_ratio = boxes(ws, np.round(ws * ratios), cx, cy)
    out = []
    for a in per_ratio:
        w, h, cx, cy = whctr(a)
        out.append(boxes(w * scales, h * scales, cx, cy))
    return np.vstack(out)


def nms(boxes: torch.Tensor, thresh: float, limit: int = 0) -> torch.Tensor:
    """Greedy NMS of boxes already sorted by score (best first): indices kept, in order. IoU uses +1 pixel
    extents; a box goes when its IoU with a kept box is > thresh. Stops after ``limit`` kept (0 = all), which
    gives the first ``limit`` of the full result."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    alive = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        keep.append(i)
        if limit and len(keep) == limit:
            break
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1) + 1).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1) + 1).clamp(min=0)
        inter = w * h
        alive &= ~(inter / (areas[i] + areas - inter) > thresh)
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def propose(scores, deltas, im_info, anchors, feat_stride, pre_nms, post_nms, nms_thresh, min_size):
    """ProposalLayer.forward on tensors: (rois (R, 5) with batch index 0, scores (R, 1)), float32, no grad."""
    if scores.shape[0] != 1:
        raise LayerError(f"only single item batches are supported (py-faster-rcnn's ProposalLayer), got "
                         f"{scores.shape[0]} images")
    dev = scores.device
    A = len(anchors)
    fg = scores.detach().float()[:, A:]  # the first A channels are background probabilities
    H, W = fg.shape[-2:]
    info = im_info.detach().float().reshape(-1)[:3]
    sx = torch.arange(W, device=dev) * feat_stride
    sy = torch.arange(H, device=dev) * feat_stride
    yy, xx = torch.meshgrid(sy, sx, indexing="ij")  # cells in (h, w) order
    shifts = torch.stack([xx, yy, xx, yy], -1).reshape(-1, 1, 4)
    anc = (torch.as_tensor(anchors, dtype=torch.float64, device=dev)[None] + shifts).reshape(-1, 4).float()
    d = deltas.detach().float().permute(0, 2, 3, 1).reshape(-1, 4)  # rows in (h, w, a) order
    s = fg.permute(0, 2, 3, 1).reshape(-1)
    # bbox_transform_inv
    widths = anc[:, 2] - anc[:, 0] + 1.0
    heights = anc[:, 3] - anc[:, 1] + 1.0
    cx = anc[:, 0] + 0.5 * widths
    cy = anc[:, 1] + 0.5 * heights
    pcx = d[:, 0] * widths + cx
    pcy = d[:, 1] * heights + cy
    pw = torch.exp(d[:, 2]) * widths
    ph = torch.exp(d[:, 3]) * heights
    boxes = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], 1)
    # clip_boxes: x to [0, im_w - 1], y to [0, im_h - 1]
    zero = torch.zeros((), device=dev)
    xmax, ymax = info[1] - 1, info[0] - 1
    boxes = torch.stack([torch.maximum(torch.minimum(boxes[:, 0], xmax), zero),
                         torch.maximum(torch.minimum(boxes[:, 1], ymax), zero),
                         torch.maximum(torch.minimum(boxes[:, 2], xmax), zero),
                         torch.maximum(torch.minimum(boxes[:, 3], ymax), zero)], 1)
    # _filter_boxes: both sides >= min_size at the input image's scale (im_info[2])
    m = min_size * info[2]
    ok = ((boxes[:, 2] - boxes[:, 0] + 1) >= m) & ((boxes[:, 3] - boxes[:, 1] + 1) >= m)
    boxes, s = boxes[ok], s[ok]
    order = torch.sort(s, descending=True, stable=True).indices
    if pre_nms > 0:
        order = order[:pre_nms]
    boxes, s = boxes[order], s[order]
    keep = nms(boxes, nms_thresh, post_nms if post_nms > 0 else 0)
    boxes, s = boxes[keep], s[keep]
    rois = torch.cat([torch.zeros(len(boxes), 1, device=dev), boxes], 1)
    return rois, s[:, None]


def _check_bottoms(shapes, A, where=""):
    if len(shapes[0]) != 4 or shapes[0][1] != 2 * A:
        raise LayerError(f"{where}bottom 0 (foreground / background scores) must be (1, 2 * {A} anchors, H, W), "
                         f"got {tuple(shapes[0])}")
    if len(shapes[1]) != 4 or shapes[1][1] != 4 * A or tuple(shapes[1][2:]) != tuple(shapes[0][2:]):
        raise LayerError(f"{where}bottom 1 (box deltas) must be (1, 4 * {A} anchors, H, W) with the scores' H x W, "
                         f"got {tuple(shapes[1])}")
    if int(np.prod(shapes[2])) < 3:
        raise LayerError(f"{where}bottom 2 (im_info) must hold (height, width, scale), got {tuple(shapes[2])}")


class Proposal(nn.Module):
    """Region proposals from RPN scores (1, 2A, H, W), box deltas (1, 4A, H, W) and im_info (height, width,
    scale): anchors at every cell moved by the deltas, clipped to the image, boxes with a side below
    min_size * scale dropped, the pre_nms best by foreground score, NMS, the post_nms best. Tops: rois (R, 5)
    = (0, x1, y1, x2, y2) and optionally their scores (R, 1). R depends on the data (the build-time shape is
    (1, 5), as Caffe's setup). No gradient."""

    def __init__(self, anchors, feat_stride, pre_nms, post_nms, nms_thresh, min_size, n_tops):
        super().__init__()
        self.anchors = np.asarray(anchors, np.float64)
        self.feat_stride, self.pre_nms, self.post_nms = feat_stride, pre_nms, post_nms
        self.nms_thresh, self.min_size, self.n_tops = nms_thresh, min_size, n_tops

    def top_shapes(self, bottom_shapes):
        return [(1, 5), (1, 1)][:self.n_tops]

    def forward(self, scores, deltas, im_info):
        rois, s = propose(scores, deltas, im_info, self.anchors, self.feat_stride, self.pre_nms, self.post_nms,
                          self.nms_thresh, self.min_size)
        return (rois, s) if self.n_tops == 2 else rois

    def extra_repr(self):
        return (f"anchors={len(self.anchors)}, feat_stride={self.feat_stride}, pre_nms_topn={self.pre_nms}, "
                f"post_nms_topn={self.post_nms}, nms_thresh={self.nms_thresh}, min_size={self.min_size}")


@register("Proposal", bottoms=3, tops=(1, 2),
          export=Export(refuse="has a data-dependent output size (NMS); run it outside the exported graph"),
          backward=False,
          example=example_net("Proposal", "proposal_param { feat_stride: 4 min_size: 0 pre_nms_topn: 50 "
                                           "post_nms_topn: 10 }",
                              inputs=((1, 18, 3, 4), (1, 36, 3, 4)), names=("x", "x1"),
                              bottoms=("x", "x1", "im_info"),
                              before='layer { name: "info" type: "DummyData" top: "im_info" dummy_data_param { '
                                     'shape { dim: 1 dim: 3 } data_filler { type: "constant" value: 16 } } }\n'))
def proposal(lp, bottom_shapes, ctx):
    """Proposal: proposal_param feat_stride (16), base_size (16), min_size (16), ratio (empty: 0.5, 1, 2),
    scale (empty: 8, 16, 32), pre_nms_topn (6000), post_nms_topn (300), nms_thresh (0.7); py-faster-rcnn's
    maths (see the module docstring). Bottoms: scores (1, 2A, H, W), deltas (1, 4A, H, W), im_info."""
    p = lp.proposal_param
    anchors = generate_anchors(p.base_size, list(p.ratio) or (0.5, 1, 2), list(p.scale) or (8, 16, 32))
    try:
        _check_bottoms(bottom_shapes, len(anchors))
    except LayerError as e:
        raise fail(lp, ctx, str(e)) from None
    if p.feat_stride <= 0:
        raise fail(lp, ctx, f"feat_stride must be positive, got {p.feat_stride}")
    return Proposal(anchors, p.feat_stride, p.pre_nms_topn, p.post_nms_topn, p.nms_thresh, p.min_size, len(lp.top))


def _param_dict(text: str) -> dict:
    """ProposalLayer reads param_str with yaml.load. Its forms in the released prototxts: "'feat_stride': 16"
    (a dict literal without braces) and, in the COCO nets, one "key: value" per line with a
    ``!!python/tuple [4, 8, 16, 32]`` value. Read as a Python literal, with braces added, or line by line;
    never by executing anything."""
    for attempt in (text, "{" + text + "}"):
        v = _literal(attempt)
        if isinstance(v, dict):
            return v
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        k = _literal(key) if key[:1] in "'\"" else key
        v = _literal(value.replace("!!python/tuple", "").strip())
        if not sep or not isinstance(k, str) or v is None:
            out = None
            break
        out[k] = tuple(v) if isinstance(v, list) and "!!python/tuple" in line else v
    if out:
        return out
    raise LayerError(f"param_str {text!r} is not a mapping like \"'feat_stride': 16\"")


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        return None


class ProposalLayer(Layer):
    """py-faster-rcnn's ``rpn.proposal_layer.ProposalLayer`` (param_str keys feat_stride, scales; also ratios,
    which later forks of py-faster-rcnn pass), built in:
    the phase picks config.py's RPN values (TEST: 6000 / 300 / NMS 0.7 / min size 16; TRAIN: 12000 / 2000)."""

    def setup(self, bottom, top):
        params = _param_dict(self.param_str)
        if "feat_stride" not in params:
            raise LayerError(f"param_str {self.param_str!r} gives no 'feat_stride'")
        self.feat_stride = params["feat_stride"]
        # py-faster-rcnn reads only 'scales'; later forks of it also pass 'ratios' (default as generate_anchors)
        self.anchors = generate_anchors(ratios=np.array(params.get("ratios", (0.5, 1, 2))),
                                        scales=np.array(params.get("scales", (8, 16, 32))))
        top[0].reshape(1, 5)
        if len(top) > 1:
            top[1].reshape(1, 1, 1, 1)

    def reshape(self, bottom, top):
        if len(bottom) != 3 or len(top) not in (1, 2):
            raise LayerError(f"ProposalLayer takes 3 bottoms (scores, deltas, im_info) and 1 or 2 tops, got "
                             f"{len(bottom)} and {len(top)}")
        _check_bottoms([b.shape for b in bottom], len(self.anchors))

    def forward(self, bottom, top):
        pre, post, thresh, min_size = RPN_CONFIG[caffe_pb2.TRAIN if self.phase == caffe_pb2.TRAIN
                                                 else caffe_pb2.TEST]
        rois, s = propose(bottom[0]._data, bottom[1]._data, bottom[2]._data, self.anchors, self.feat_stride,
                          pre, post, thresh, min_size)
        top[0]._data = rois
        if len(top) > 1:
            top[1]._data = s

    def backward(self, top, propagate_down, bottom):
        pass  # "This layer does not propagate gradients."


BUILTIN.setdefault("rpn.proposal_layer.ProposalLayer", ProposalLayer)
