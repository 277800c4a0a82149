"""SSD's layers (weiliu89/caffe, branch ssd): Normalize, Permute, PriorBox, DetectionOutput.

Maths as the fork's src/caffe/layers/normalize_layer.cpp, permute_layer.cpp, prior_box_layer.cpp and
detection_output_layer.cpp (Forward_cpu each), with the box helpers of src/caffe/util/bbox_util.cpp
(DecodeBBox, JaccardOverlap, GetMaxScoreIndex, ApplyNMSFast). Parameters: ``norm_param`` (206),
``permute_param`` (202), ``prior_box_param`` (203), ``detection_output_param`` (204), the fork's numbers.
"""
import math

import numpy as np
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from .fillers import fill_
from ..proto import caffe_pb2
from ..registry import Export, register
from .base import eager, example_net, fail

CodeType = caffe_pb2.PriorBoxParameter


# -- Normalize ------------------------------------------------------------------------------------------------

class Normalize(nn.Module):
    """y = x / norm * scale. norm = sqrt(sum(x^2) + eps) over C*H*W per sample (across_spatial) or over C
    per position; scale is one 0-d value (channel_shared) or one per channel (axis 1)."""

    def __init__(self, channels, across_spatial, channel_shared, eps):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(()) if channel_shared else torch.empty(channels))
        self.across_spatial = across_spatial
        # a 1-element tensor, not a scalar: torch.onnx's graph optimizer drops "+ c" for a scalar c this small
        self.register_buffer("eps", torch.tensor([eps], dtype=torch.float32), persistent=False)

    def forward(self, x):
        sq = x * x
        eps = self.eps.to(x.dtype)
        if self.across_spatial:
            norm = torch.sqrt(sq.reshape(x.shape[0], -1).sum(1) + eps)
            y = x * (1.0 / norm).reshape(-1, *[1] * (x.dim() - 1))  # caffe_cpu_scale by 1 / norm
        else:
            y = x / torch.sqrt(sq.sum(1, keepdim=True) + eps)
        s = self.scale if self.scale.dim() == 0 else self.scale.reshape(1, -1, *[1] * (x.dim() - 2))
        return y * s

    def extra_repr(self):
        return f"across_spatial={self.across_spatial}, scale={tuple(self.scale.shape)}, eps={self.eps.item():g}"


@register("Normalize", reshape_like=True,
          pure=True,
          coord="identity",
          blobs=("scale",),
          export=Export(),
          example=example_net("Normalize", "norm_param { across_spatial: false channel_shared: false "
                                           "scale_filler { type: 'constant' value: 20 } }"))
def normalize(lp, bottom_shapes, ctx):
    """Normalize: norm_param across_spatial (true), channel_shared (true), eps (1e-10), scale_filler
    (absent = constant 1). Bottom of 2 to 4 axes (the fork reads channels/height/width)."""
    p = lp.norm_param
    shape = bottom_shapes[0]
    if not 2 <= len(shape) <= 4:
        raise fail(lp, ctx, f"needs a bottom of 2 to 4 axes (N, C[, H[, W]]), got shape {tuple(shape)}")
    m = Normalize(shape[1], p.across_spatial, p.channel_shared, p.eps)
    if p.HasField("scale_filler"):
        fill_(m.scale, p.scale_filler)
    else:
        nn.init.constant_(m.scale, 1.0)
    return m


# -- Permute --------------------------------------------------------------------------------------------------

class Permute(nn.Module):
    def __init__(self, order):
        super().__init__()
        self.order = tuple(order)

    def forward(self, x):
        return x.permute(*self.order).contiguous()

    def extra_repr(self):
        return f"order={self.order}"


@register("Permute",
          pure=True,
          export=Export(),
          example=example_net("Permute", "permute_param { order: 0 order: 2 order: 3 order: 1 }"))
def permute(lp, bottom_shapes, ctx):
    """Permute: permute_param.order, the new order of the axes; axes not listed follow in their own order
    (as PermuteLayer::LayerSetUp). Each order must be < the bottom's axis count, without repeats."""
    nd = len(bottom_shapes[0])
    order = []
    for o in lp.permute_param.order:
        if o >= nd:
            raise fail(lp, ctx, f"order {o} is out of range for a {nd}-axis bottom")
        if o in order:
            raise fail(lp, ctx, f"order {o} is given twice")
        order.append(o)
    order += [i for i in range(nd) if i not in order]
    return Permute(order)


# -- PriorBox -------------------------------------------------------------------------------------------------

def prior_boxes(layer_h, layer_w, img_h, img_w, step_h, step_w, offset, min_sizes, max_sizes,
                aspect_ratios, clip, variance):
    """PriorBoxLayer::Forward_cpu as a (1, 2, layer_h * layer_w * num_priors * 4) float32 array.

    Per cell (row-major) and per min_size: the square box of side int(min_size), then (with max sizes) the
    square of side sqrt(int(min) * int(max)), then one box per aspect ratio != 1 of width int(min) * sqrt(ar)
    and height int(min) / sqrt(ar); corners (centre -+ size / 2) / image size, centre ((w + offset) * step).
    """
    f32 = np.float32
    if not step_h or not step_w:
        step_w, step_h = f32(img_w) / f32(layer_w), f32(img_h) / f32(layer_h)
    sizes = []  # (box_width, box_height) per prior, float32 as the fork's float locals
    for s, mn in enumerate(min_sizes):
        mn = int(mn)  # the fork keeps min/max sizes in int locals
        sizes.append((mn, mn))
        if max_sizes:
            side = math.sqrt(mn * int(max_sizes[s]))
            sizes.append((side, side))
        for ar in aspect_ratios:
            if abs(ar - 1.0) < 1e-6:
                continue
            sizes.append((mn * math.sqrt(ar), mn / math.sqrt(ar)))
    bw = np.array([w for w, _ in sizes], f32).astype(np.float64)
    bh = np.array([h for _, h in sizes], f32).astype(np.float64)
    cx = ((np.arange(layer_w, dtype=f32) + f32(offset)) * f32(step_w)).astype(np.float64)
    cy = ((np.arange(layer_h, dtype=f32) + f32(offset)) * f32(step_h)).astype(np.float64)
    cx, cy = cx[None, :, None], cy[:, None, None]
    boxes = np.stack(np.broadcast_arrays((cx - bw / 2.) / img_w, (cy - bh / 2.) / img_h,
                                         (cx + bw / 2.) / img_w, (cy + bh / 2.) / img_h), -1).astype(f32)
    boxes = boxes.reshape(-1)
    if clip:
        boxes = np.clip(boxes, 0, 1)
    var = np.tile(np.asarray(variance, f32), boxes.size // len(variance))
    return np.stack([boxes, var])[None]


class PriorBox(nn.Module):
    """The priors of one feature map (bottom 0) for the image (bottom 1, or img_size/img_h/img_w): a function
    of the two bottoms' sizes only, never of their values (no gradient)."""

    def __init__(self, num_priors, img_hw, step_hw, offset, min_sizes, max_sizes, aspect_ratios, clip, variance):
        super().__init__()
        self.num_priors, self.img_hw, self.step_hw, self.offset = num_priors, img_hw, step_hw, offset
        self.min_sizes, self.max_sizes, self.aspect_ratios = min_sizes, max_sizes, aspect_ratios
        self.clip, self.variance = clip, variance
        self._cache = {}

    def top_shapes(self, bottom_shapes):
        h, w = bottom_shapes[0][2:4]
        return [(1, 2, h * w * self.num_priors * 4)]

    def forward(self, x, img=None):
        h, w = x.shape[2], x.shape[3]
        ih, iw = self.img_hw if self.img_hw else (img.shape[2], img.shape[3])
        key = (int(h), int(w), int(ih), int(iw))
        if key not in self._cache:
            self._cache[key] = torch.from_numpy(prior_boxes(*key, *self.step_hw, self.offset, self.min_sizes,
                                                            self.max_sizes, self.aspect_ratios, self.clip,
                                                            self.variance))
        return self._cache[key].to(device=x.device, dtype=x.dtype)

    def extra_repr(self):
        return (f"min_size={self.min_sizes}, max_size={self.max_sizes}, aspect_ratios={self.aspect_ratios}, "
                f"img={self.img_hw}, step={self.step_hw}, offset={self.offset}, clip={self.clip}, "
                f"variance={self.variance}")


def _prior_box_export(module, dynamic_hw):
    return "PriorBox's priors are a constant of the input size"


@register("PriorBox", bottoms=(1, 2),
          pure=True,
          backward=False,
          export=Export(deploy=_prior_box_export),
          example=example_net("PriorBox", "prior_box_param { min_size: 4 max_size: 9 aspect_ratio: 2 "
                                          "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }",
                              inputs=((2, 4, 3, 5), (2, 3, 24, 40))))
def prior_box(lp, bottom_shapes, ctx):
    """PriorBox: prior_box_param min_size (required, > 0), max_size (one per min_size, > min_size),
    aspect_ratio (1 is always first; repeats within 1e-6 dropped; with flip (true) each new ratio r is
    followed by 1/r), clip (false), variance (none = 0.1, one value, or four), img_size | img_h/img_w (else
    bottom 1's H x W), step | step_h/step_w (else image size / feature size), offset (0.5).
    Top: (1, 2, H * W * num_priors * 4), boxes then variances. As PriorBoxLayer::LayerSetUp/Forward_cpu."""
    p = lp.prior_box_param
    if not len(p.min_size):
        raise fail(lp, ctx, "needs min_size")
    if any(s <= 0 for s in p.min_size):
        raise fail(lp, ctx, f"min_size must be positive, got {list(p.min_size)}")
    ratios = [1.0]
    for ar in p.aspect_ratio:
        if any(abs(ar - r) < 1e-6 for r in ratios):
            continue
        ratios.append(ar)
        if p.flip:
            ratios.append(float(np.float32(1.0 / ar)))
    num_priors = len(ratios) * len(p.min_size)
    if len(p.max_size):
        if len(p.max_size) != len(p.min_size):
            raise fail(lp, ctx, f"needs one max_size per min_size, got {len(p.max_size)} and {len(p.min_size)}")
        if any(mx <= mn for mn, mx in zip(p.min_size, p.max_size)):
            raise fail(lp, ctx, "max_size must be greater than min_size")
        num_priors += len(p.max_size)
    var = list(p.variance)
    if len(var) > 1 and len(var) != 4:
        raise fail(lp, ctx, f"variance takes 1 or 4 values, got {len(var)}")
    if any(v <= 0 for v in var):
        raise fail(lp, ctx, f"variance must be positive, got {var}")
    var = var or [0.1]  # the fork's C++ default
    if p.HasField("img_h") or p.HasField("img_w"):
        if p.HasField("img_size"):
            raise fail(lp, ctx, "give img_size or img_h/img_w, not both")
        img = (p.img_h, p.img_w)
    elif p.HasField("img_size"):
        img = (p.img_size, p.img_size)
    else:
        img = None
    if img is not None and min(img) <= 0:
        raise fail(lp, ctx, f"image size must be positive, got {img}")
    if p.HasField("step_h") or p.HasField("step_w"):
        if p.HasField("step"):
            raise fail(lp, ctx, "give step or step_h/step_w, not both")
        step = (p.step_h, p.step_w)
        if min(step) <= 0:
            raise fail(lp, ctx, f"step_h and step_w must be positive, got {step}")
    elif p.HasField("step"):
        if p.step <= 0:
            raise fail(lp, ctx, f"step must be positive, got {p.step}")
        step = (p.step, p.step)
    else:
        step = (0.0, 0.0)
    for i, s in enumerate(bottom_shapes):
        if len(s) != 4:
            raise fail(lp, ctx, f"bottom {i} must have 4 axes (N, C, H, W), got shape {tuple(s)}")
    if img is None and len(bottom_shapes) < 2:
        raise fail(lp, ctx, "without img_size or img_h/img_w the image size comes from a 2nd bottom")
    return PriorBox(num_priors, img, step, p.offset, list(p.min_size), list(p.max_size), ratios, p.clip, var)


# -- DetectionOutput ------------------------------------------------------------------------------------------

def decode_boxes(prior, variance, loc, code_type, variance_encoded_in_target):
    """bbox_util.cpp DecodeBBox over arrays: prior, variance (P, 4) and loc (..., P, 4) -> (..., P, 4),
    float32 arithmetic as the fork's float fields."""
    f32 = np.float32
    prior, variance, loc = (np.asarray(a, f32) for a in (prior, variance, loc))
    v = np.ones_like(variance) if variance_encoded_in_target else variance
    if code_type == CodeType.CORNER:
        return prior + v * loc
    pw = prior[:, 2] - prior[:, 0]
    ph = prior[:, 3] - prior[:, 1]
    if code_type == CodeType.CORNER_SIZE:
        return prior + v * loc * np.stack([pw, ph, pw, ph], -1)
    if code_type != CodeType.CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type}")
    pcx = (prior[:, 0] + prior[:, 2]) / f32(2)
    pcy = (prior[:, 1] + prior[:, 3]) / f32(2)
    cx = v[:, 0] * loc[..., 0] * pw + pcx
    cy = v[:, 1] * loc[..., 1] * ph + pcy
    w = np.exp((v[:, 2] * loc[..., 2]).astype(np.float64)).astype(f32) * pw
    h = np.exp((v[:, 3] * loc[..., 3]).astype(np.float64)).astype(f32) * ph
    return np.stack([cx - w / f32(2), cy - h / f32(2), cx + w / f32(2), cy + h / f32(2)], -1)


def box_sizes(boxes):
    """BBoxSize (normalized): width * height, 0 for an inverted box."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return np.where((w < 0) | (h < 0), np.float32(0), w * h).astype(np.float32)


def _overlap(box, size, boxes, sizes):
    """JaccardOverlap of one box with each of ``boxes`` (float32): intersection / (size1 + size2 - intersection),
    0 when the boxes do not overlap with a positive width and height."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = iw * ih
    return np.where((iw > 0) & (ih > 0), inter / (size + sizes - inter), np.float32(0))


def nms_fast(boxes, sizes, scores, score_threshold, nms_threshold, eta, top_k):
    """ApplyNMSFast: candidates with score > score_threshold in stable descending score order, the first
    top_k (-1 = all); a candidate is kept when its Jaccard overlap with every box kept so far is <= the
    adaptive threshold, which is multiplied by eta after each keep while it is > 0.5. Returns indices."""
    cand = np.nonzero(scores > score_threshold)[0]
    cand = cand[np.argsort(-scores[cand], kind="stable")]
    if -1 < top_k < len(cand):
        cand = cand[:top_k]
    b, s = boxes[cand], sizes[cand]
    worst = np.zeros(len(cand), np.float32)  # each candidate's largest overlap with the boxes kept so far
    keep, threshold = [], np.float32(nms_threshold)
    for i in range(len(cand)):
        if not worst[i] <= threshold:  # (NaN overlaps reject, as the fork's "overlap <= threshold")
            continue
        keep.append(i)
        with np.errstate(all="ignore"):  # inf / nan boxes give what the C++ float arithmetic gives
            worst[i + 1:] = np.maximum(worst[i + 1:], _overlap(b[i], s[i], b[i + 1:], s[i + 1:]))
        if eta < 1 and threshold > 0.5:
            threshold = np.float32(threshold * np.float32(eta))
    return [int(cand[i]) for i in keep]


class DetectionOutput(nn.Module):
    """Decode the location predictions against the priors, run NMS per image and class, keep the keep_top_k
    best over classes. Top: (1, 1, K, 7) rows (image, label, score, xmin, ymin, xmax, ymax) by image, then
    label, then score; (1, 1, N, 7) of -1 (image id in column 0) when nothing is kept."""

    def __init__(self, num_classes, share_location, background, code_type, variance_encoded_in_target,
                 keep_top_k, confidence_threshold, nms_threshold, eta, top_k):
        super().__init__()
        self.num_classes, self.share_location, self.background = num_classes, share_location, background
        self.code_type, self.variance_encoded_in_target = code_type, variance_encoded_in_target
        self.keep_top_k, self.confidence_threshold = keep_top_k, confidence_threshold
        self.nms_threshold, self.eta, self.top_k = nms_threshold, eta, top_k

    def top_shapes(self, bottom_shapes):
        return [(1, 1, 1, 7)]  # DetectionOutputLayer::Reshape; Forward sets the real row count

    def detections(self, loc, conf, prior):
        """The rows as a float32 (K, 7) array from numpy arrays of the three bottoms."""
        num, C = loc.shape[0], self.num_classes
        P = prior.shape[2] // 4
        L = 1 if self.share_location else C
        loc = loc.reshape(num, P, L, 4).transpose(0, 2, 1, 3)  # (num, L, P, 4)
        conf = conf.reshape(num, P, C)
        pri = prior.reshape(-1)[:2 * P * 4].reshape(2, P, 4)  # the first image's priors, as the fork
        with np.errstate(all="ignore"):  # inf / nan propagate silently, as in C++
            boxes = decode_boxes(pri[0], pri[1], loc, self.code_type, self.variance_encoded_in_target)
            sizes = box_sizes(boxes)
        rows = []
        for i in range(num):
            kept = {}
            for c in range(C):
                if c == self.background:
                    continue
                li = 0 if self.share_location else c
                kept[c] = nms_fast(boxes[i, li], sizes[i, li], conf[i, :, c], self.confidence_threshold,
                                   self.nms_threshold, self.eta, self.top_k)
            if -1 < self.keep_top_k < sum(len(v) for v in kept.values()):
                pairs = [(conf[i, j, c], c, j) for c in sorted(kept) for j in kept[c]]
                order = sorted(range(len(pairs)), key=lambda k: -pairs[k][0])[:self.keep_top_k]
                kept = {}
                for k in order:
                    kept.setdefault(pairs[k][1], []).append(pairs[k][2])
            for c in sorted(kept):
                li = 0 if self.share_location else c
                for j in kept[c]:
                    rows.append([i, c, conf[i, j, c], *boxes[i, li, j]])
        if not rows:
            out = np.full((num, 7), -1, np.float32)
            out[:, 0] = np.arange(num)
            return out
        return np.asarray(rows, np.float32).reshape(-1, 7)

    def forward(self, loc, conf, prior, *unused):
        if isinstance(loc, FakeTensor) or loc.device.type == "meta":  # shape inference: Reshape's shape
            return loc.new_full((1, 1, 1, 7), -1.0)
        return self._run(loc, conf, prior)

    @eager  # numpy and a data-dependent size: torch.compile runs it eagerly (a graph break)
    def _run(self, loc, conf, prior):
        arrays = [t.detach().to("cpu", torch.float32).numpy() for t in (loc, conf, prior)]
        out = self.detections(*arrays)
        return torch.from_numpy(out).to(device=loc.device, dtype=loc.dtype).reshape(1, 1, -1, 7)

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, share_location={self.share_location}, "
                f"background_label_id={self.background}, code_type={self.code_type}, "
                f"keep_top_k={self.keep_top_k}, confidence_threshold={self.confidence_threshold}, "
                f"nms_threshold={self.nms_threshold}, top_k={self.top_k}, eta={self.eta}")


_DET_EXAMPLE = (
    'layer { name: "pb" type: "PriorBox" bottom: "x" bottom: "img" top: "pb" '
    'prior_box_param { min_size: 8 aspect_ratio: 2 variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }\n'
    'layer { name: "sm" type: "Softmax" bottom: "conf" top: "sm" softmax_param { axis: 2 } }\n'
    'layer { name: "fl" type: "Flatten" bottom: "sm" top: "fl" }\n')


@register("DetectionOutput", bottoms=(3, 4),
          backward=False,
          export=Export(refuse="has a data-dependent output size (NMS): export the net up to its inputs "
                               "(mbox_loc, mbox_conf_flatten, mbox_priorbox) and run DetectionOutput outside"),
          example=example_net("DetectionOutput", "detection_output_param { num_classes: 3 code_type: CENTER_SIZE "
                                                 "nms_param { nms_threshold: 0.45 top_k: 20 } keep_top_k: 10 }",
                              inputs=((2, 4, 2, 3), (2, 3, 8, 12), (2, 72), (2, 18, 3)),
                              names=("x", "img", "loc", "conf"), before=_DET_EXAMPLE,
                              bottoms=("loc", "fl", "pb")))
def detection_output(lp, bottom_shapes, ctx):
    """DetectionOutput: detection_output_param num_classes (required), share_location (true),
    background_label_id (0), nms_param {nms_threshold (0.3), top_k (none), eta (1)}, code_type (CORNER),
    variance_encoded_in_target (false), keep_top_k (-1), confidence_threshold (none = all scores).
    Bottoms: loc (N, P*L*4), conf (N, P*C), priors (1, 2, P*4) [, a 4th the fork's forward never reads].
    save_output_param, visualize and save_file are parsed and ignored (netspec writes no result files)."""
    p = lp.detection_output_param
    if not p.HasField("num_classes"):
        raise fail(lp, ctx, "needs num_classes")
    n = p.nms_param
    if n.nms_threshold < 0:
        raise fail(lp, ctx, f"nms_threshold must be non-negative, got {n.nms_threshold}")
    if not 0 < n.eta <= 1:
        raise fail(lp, ctx, f"eta must be in (0, 1], got {n.eta}")
    loc, conf, prior = (tuple(s) for s in bottom_shapes[:3])
    if len(prior) < 3:
        raise fail(lp, ctx, f"bottom 2 (priors) must have 3 axes (1, 2, P*4), got shape {prior}")
    P, C = prior[2] // 4, p.num_classes
    L = 1 if p.share_location else C
    if len(loc) < 2 or loc[1] != P * L * 4:
        raise fail(lp, ctx, f"bottom 0 (locations) {loc} must have {P} priors x {L} x 4 = {P * L * 4} on axis 1")
    if len(conf) < 2 or conf[1] != P * C:
        raise fail(lp, ctx, f"bottom 1 (confidences) {conf} must have {P} priors x {C} classes = {P * C} on axis 1")
    if loc[0] != conf[0]:
        raise fail(lp, ctx, f"bottoms 0 and 1 differ in batch size: {loc[0]} and {conf[0]}")
    threshold = p.confidence_threshold if p.HasField("confidence_threshold") else -np.finfo(np.float32).max
    return DetectionOutput(C, p.share_location, p.background_label_id, p.code_type, p.variance_encoded_in_target,
                           p.keep_top_k, np.float32(threshold), n.nms_threshold, n.eta,
                           n.top_k if n.HasField("top_k") else -1)
