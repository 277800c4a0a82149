"""Loss layers (Caffe LossLayer family): top 0 is the unweighted scalar loss; the net applies loss_weight.
Labels are cast to int by truncation (Caffe's static_cast<int>) and get no gradient. Label range checks
read values (one device sync per forward), so they are skipped under torch.compile and on fake tensors."""
import functools
import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..errors import LayerError
from ..registry import register
from .inner_product import no_backward_into
from .base import canonical_axis, concrete, fail, ident, shape_str

FLT_MIN = float(np.finfo(np.float32).tiny)
LOG_FLT_MIN = float(np.log(np.float32(FLT_MIN)))  # SoftmaxWithLoss caps a pixel's loss at -log(FLT_MIN)
LOG_THRESHOLD = float(np.log(np.float32(1e-20)))  # kLOG_THRESHOLD of InfogainLoss / MultinomialLogisticLoss


def normalization(lp, default: Optional[str] = None) -> str:
    """loss_param.normalization; when unset, the legacy ``normalize`` (true VALID, false BATCH_SIZE), else
    the proto default (VALID) or the layer's own ``default``."""
    p = lp.loss_param
    if not p.HasField("normalization"):
        if p.HasField("normalize"):
            return "VALID" if p.normalize else "BATCH_SIZE"
        if default:
            return default
    return p.NormalizationMode.Name(p.normalization)


def normalizer(mode: str, outer: int, inner: int, valid=None):
    """Caffe's LossLayer::GetNormalizer, max(1, n); ``valid`` is the (weighted) valid count as a tensor,
    or None when there is no ignore_label (VALID then counts everything). A weighted count in (0, 1) is kept
    as is; only 0 becomes 1."""
    if mode == "FULL" or (mode == "VALID" and valid is None):
        return max(1, outer * inner)
    if mode == "VALID":
        return torch.where(valid > 0, valid, torch.ones_like(valid))
    if mode == "BATCH_SIZE":
        return max(1, outer)
    return 1


def clamp_st(v: torch.Tensor, lo: float) -> torch.Tensor:
    """max(v, lo) in the forward pass, identity in the backward pass (Caffe differentiates the unclamped
    expression: SoftmaxWithLoss's (p - onehot), Infogain's p * sum(H_y) - H_y, MultinomialLogistic's -1/p)."""
    return v + (v.clamp_min(lo) - v).detach()


def _labels(name, x, label, axis, ignore, num_classes):
    """Integer labels shaped as x without ``axis``, the valid mask (None: no ignore_label), and safe labels
    (ignored ones replaced by 0) for indexing."""
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1:])
    if label.numel() != outer * inner:
        raise LayerError(
            f"{name}: number of labels must match number of predictions: scores {shape_str(x.shape)} with axis "
            f"{axis} need {outer * inner} labels ({outer} x {inner}), got {label.numel()} "
            f"({shape_str(label.shape)}), with integer values in {{0, ..., {num_classes - 1}}}")
    raw = label.detach()
    if concrete(raw) and raw.is_floating_point() and raw.numel() and not bool(torch.isfinite(raw).all()):
        v = float(raw[~torch.isfinite(raw)].reshape(-1)[0])
        raise LayerError(f"{name}: label value {v} is not a number; labels must be integer class indices "
                         f"(check the label data); {int((~torch.isfinite(raw)).sum())} such labels")
    lab = raw.reshape(tuple(x.shape[:axis]) + tuple(x.shape[axis + 1:])).long()
    valid = None if ignore is None else lab != ignore
    if concrete(lab) and lab.numel():
        bad = (lab < 0) | (lab >= num_classes)
        if valid is not None:
            bad &= valid
        if bool(bad.any()):
            v = int(lab[bad][0])
            extra = f" and is not ignore_label {ignore}" if ignore is not None else " (no ignore_label is set)"
            raise LayerError(f"{name}: label value {v} is outside [0, {num_classes}){extra}; "
                             f"{int(bad.sum())} such labels")
    safe = lab if valid is None else torch.where(valid, lab, torch.zeros_like(lab))
    return lab, valid, safe, outer, inner


def _float32(forward):
    """Run ``forward`` with autocast off and floating bottoms in float32, as Caffe computes every loss: in half
    precision a score map's log-softmax and pixel sum overflow (fp16's max is 65504) or lose the small terms."""
    @functools.wraps(forward)
    def run(self, *bottoms):
        device = next((b.device.type for b in bottoms if torch.is_tensor(b)), "cpu")
        with torch.autocast(device, enabled=False):
            return forward(self, *(b.float() if torch.is_tensor(b) and b.is_floating_point() else b
                                   for b in bottoms))
    return run


class _Loss(nn.Module):
    """Base of the loss modules: each subclass's forward runs in float32 (``_float32``)."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "forward" in cls.__dict__:
            cls.forward = _float32(cls.__dict__["forward"])

    def __init__(self, name: str, n_tops: int = 1):
        super().__init__()
        self.name, self.n_tops = name, n_tops

    def top_shapes(self, bottom_shapes):
        return [()] + [tuple(bottom_shapes[0])] * (self.n_tops - 1)


def _ignore(lp):
    return lp.loss_param.ignore_label if lp.loss_param.HasField("ignore_label") else None


def _check_first_dim(lp, ctx, bottom_shapes):
    a, b = bottom_shapes[0], bottom_shapes[1]
    if a[:1] != b[:1]:
        raise fail(lp, ctx, f"the data '{lp.bottom[0]}' {shape_str(a)} and label '{lp.bottom[1]}' {shape_str(b)} "
                      "should have the same first dimension")


# -- SoftmaxWithLoss ----------------------------------------------------------------------------------------

class SoftmaxWithLoss(_Loss):
    count_valid = False
    def __init__(self, name, axis, ignore, mode, class_weight, n_tops):
        super().__init__(name, n_tops)
        self.axis, self.ignore, self.mode = axis, ignore, mode
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(self, x, label):
        a = self.axis
        lab, valid, safe, outer, inner = _labels(self.name, x, label, a, self.ignore, x.shape[a])
        logp = torch.log_softmax(x, a).gather(a, safe.unsqueeze(a)).squeeze(a)
        nll = -clamp_st(logp, LOG_FLT_MIN)
        w = None if valid is None else valid.to(x.dtype)
        if self.class_weight is not None:
            cw = self.class_weight.to(x.dtype)[safe]
            w = cw if w is None else cw * w
        per = nll if w is None else nll * w
        count = None if w is None else w.sum()  # VALID: (weighted) number of valid positions
        if self.count_valid:  # SegNet/ENet weight_by_label_freqs: VALID counts positions, not weights
            count = None if valid is None else valid.to(x.dtype).sum()
        loss = per.sum() / normalizer(self.mode, outer, inner, count)
        if self.n_tops == 1:
            return loss
        return loss, torch.softmax(x, a).detach()  # Caffe's backward ignores the prob top's diff


@register("SoftmaxWithLoss", bottoms=2, tops=(1, 2), loss=True,
          colour="#FFD700",
          example=('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } shape { dim: 2 dim: 1 dim: 5 dim: 6 } } }\n'
'layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "y" }'))
def build_softmax_with_loss(lp, bottom_shapes, ctx):
    """SoftmaxWithLoss: softmax over softmax_param.axis (default 1), then per label position
    loss_i = -log(max(p_label, FLT_MIN)) (so capped at 87.34) and gradient (p - onehot), zero where the
    label equals loss_param.ignore_label (only when set). The sum is divided by max(1, n):
    normalization FULL n = outer*inner, VALID n = #non-ignored (all when no ignore_label), BATCH_SIZE
    n = outer (dims before axis), NONE n = 1; unset with legacy normalize: true VALID, false BATCH_SIZE.
    Labels: outer*inner values in [0, C) or ignore_label, else LayerError.

    loss_param.class_weight (netspec extension, one per class): each position's loss and gradient are
    multiplied by class_weight[label]; VALID then divides by the sum of the weights of the valid positions
    (1 if that sum is 0), the other modes keep their n. Optional top 1 = the softmax probabilities (Caffe
    itself cannot build that; here it needs loss_weight given per top, and gets no gradient)."""
    x, label = bottom_shapes
    axis = canonical_axis(lp, ctx, lp.softmax_param.axis, len(x), "softmax_param.axis")
    C = x[axis]
    outer, inner = math.prod(x[:axis]), math.prod(x[axis + 1:])
    if math.prod(label) != outer * inner:
        raise fail(lp, ctx, f"number of labels must match number of predictions: scores '{lp.bottom[0]}' "
                      f"{shape_str(x)} (softmax axis {axis}) need {outer * inner} labels, label '{lp.bottom[1]}' "
                      f"{shape_str(label)} has {math.prod(label)}; labels take integer values in "
                      f"{{0, ..., {C - 1}}}")
    cw = None
    if lp.loss_param.class_weight:
        if len(lp.loss_param.class_weight) != C:
            raise fail(lp, ctx, f"loss_param.class_weight has {len(lp.loss_param.class_weight)} values for {C} classes "
                          f"(axis {axis} of '{lp.bottom[0]}' {shape_str(x)}); give one per class")
        cw = torch.tensor(list(lp.loss_param.class_weight), dtype=torch.float32)
    segnet = lp.loss_param.weight_by_label_freqs  # SegNet / ENet softmax_loss_layer.cpp: class_weighting
    if segnet:
        if cw is not None or len(lp.loss_param.class_weighting) != C:
            raise fail(lp, ctx, f"weight_by_label_freqs needs one class_weighting per class ({C}), got "
                                f"{len(lp.loss_param.class_weighting)}, and no class_weight")
        cw = torch.tensor(list(lp.loss_param.class_weighting), dtype=torch.float32)
    m = SoftmaxWithLoss(ident(lp, ctx), axis, _ignore(lp), normalization(lp), cw, len(lp.top))
    m.count_valid = segnet
    return m


# -- InfogainLoss -------------------------------------------------------------------------------------------

def read_blob(path: str) -> np.ndarray:
    from ..proto import pb2
    from ..errors import FormatError
    try:
        with open(path, "rb") as f:
            blob = pb2().BlobProto.FromString(f.read())
    except OSError as e:
        raise FormatError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:
        raise FormatError(f"{path} is not a binary BlobProto: {e}") from None
    return np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)


#: infogain_loss_layer.cpp Backward_cpu: LOG(FATAL) << " Layer cannot backpropagate to infogain inputs."
INFOGAIN_NO_BACKWARD = ("Caffe's InfogainLoss cannot back-propagate to the infogain matrix H, bottom 2 "
                        "(infogain_loss_layer.cpp: \"cannot backpropagate to infogain inputs\")")


class InfogainLoss(_Loss):
    def __init__(self, name, axis, ignore, mode, H, n_tops):
        super().__init__(name, n_tops)
        self.axis, self.ignore, self.mode = axis, ignore, mode
        self.register_buffer("H", H, persistent=False)

    def forward(self, x, label, H=None):
        a, C = self.axis, x.shape[self.axis]
        Hb, H = H, (self.H if H is None else H.detach()).reshape(C, C).to(x.dtype)
        lab, valid, safe, outer, inner = _labels(self.name, x, label, a, self.ignore, C)
        logp = clamp_st(torch.log_softmax(x, a), LOG_THRESHOLD)
        per = -(H[safe].movedim(-1, a) * logp).sum(a)  # -sum_l H[y, l] log max(p_l, 1e-20)
        count = None
        if valid is not None:
            per = per * valid.to(x.dtype)
            count = valid.sum().to(x.dtype)
        loss = per.sum() / normalizer(self.mode, outer, inner, count)
        if Hb is not None:
            loss = no_backward_into(loss, Hb, f"{self.name}: {INFOGAIN_NO_BACKWARD}; remove force_backward: true "
                                              "(Caffe fails with it even where propagate_down: false is given) or "
                                              "read H from infogain_loss_param.source")
        return loss if self.n_tops == 1 else (loss, torch.softmax(x, a).detach())


@register("InfogainLoss", bottoms=(2, 3), tops=(1, 2), loss=True,
          example=('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 6 dim: 4 } shape { dim: 6 } } }\n'
'layer { name: "id" type: "Input" top: "H" input_param { shape { dim: 4 dim: 4 } } }\n'
'layer { name: "l" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" top: "loss" propagate_down: true propagate_down: false propagate_down: false }'))
def build_infogain_loss(lp, bottom_shapes, ctx):
    """InfogainLoss: p = softmax over infogain_loss_param.axis (default 1); per label position
    loss = -sum_l H[label, l] * log(max(p_l, 1e-20)), gradient p * sum_l H[label, l] - H[label, :].
    H (C x C) is bottom 2 (no gradient) or read from infogain_loss_param.source (.binaryproto).
    ignore_label and normalization as SoftmaxWithLoss. Optional top 1 = p."""
    if len(lp.propagate_down) == 3 and lp.propagate_down[2]:
        raise fail(lp, ctx, f"{INFOGAIN_NO_BACKWARD}; set propagate_down: false for bottom '{lp.bottom[2]}'")
    x, label = bottom_shapes[:2]
    axis = canonical_axis(lp, ctx, lp.infogain_loss_param.axis, len(x), "infogain_loss_param.axis")
    C = x[axis]
    outer, inner = math.prod(x[:axis]), math.prod(x[axis + 1:])
    if math.prod(label) != outer * inner:
        raise fail(lp, ctx, f"number of labels must match number of predictions: scores '{lp.bottom[0]}' "
                      f"{shape_str(x)} (axis {axis}) need {outer * inner} labels, label '{lp.bottom[1]}' "
                      f"{shape_str(label)} has {math.prod(label)}")
    H = None
    if len(bottom_shapes) == 3:
        n = math.prod(bottom_shapes[2])
        what = f"bottom '{lp.bottom[2]}' {shape_str(bottom_shapes[2])}"
    else:
        if not lp.infogain_loss_param.source:
            raise fail(lp, ctx, "give the infogain matrix H as a 3rd bottom or as infogain_loss_param.source")
        h = read_blob(lp.infogain_loss_param.source)
        n, what = h.size, f"source '{lp.infogain_loss_param.source}'"
        H = torch.from_numpy(h)
    if n != C * C:
        raise fail(lp, ctx, f"the infogain matrix {what} has {n} values, need {C} x {C} = {C * C}")
    return InfogainLoss(ident(lp, ctx), axis, _ignore(lp), normalization(lp), H, len(lp.top))


# -- EuclideanLoss / SigmoidCrossEntropyLoss ----------------------------------------------------------------

class EuclideanLoss(_Loss):
    def forward(self, a, b):
        d = a - b.reshape(a.shape)
        return (d * d).sum() / a.shape[0] / 2


@register("EuclideanLoss", bottoms=2, tops=1, loss=True,
          example=('layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
'layer { name: "l" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "loss" }'))
def build_euclidean_loss(lp, bottom_shapes, ctx):
    """EuclideanLoss: sum((a - b)^2) / N / 2 with N = shape[0]; both bottoms get gradients."""
    a, b = bottom_shapes
    _check_first_dim(lp, ctx, bottom_shapes)
    if math.prod(a[1:]) != math.prod(b[1:]):
        raise fail(lp, ctx, f"inputs must have the same dimension: '{lp.bottom[0]}' {shape_str(a)}, "
                      f"'{lp.bottom[1]}' {shape_str(b)}")
    return EuclideanLoss(ident(lp, ctx))


class SigmoidCrossEntropyLoss(_Loss):
    def __init__(self, name, ignore, mode):
        super().__init__(name)
        self.ignore, self.mode = ignore, mode

    def forward(self, x, t):
        t = t.detach().reshape(x.shape)
        per = nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")  # grad sigmoid(x) - t
        count = None
        if self.ignore is not None:
            valid = t.long() != self.ignore
            per = torch.where(valid, per, torch.zeros_like(per))
            count = valid.sum().to(x.dtype)
        return per.sum() / normalizer(self.mode, x.shape[0], math.prod(x.shape[1:]), count)


@register("SigmoidCrossEntropyLoss", bottoms=2, tops=1, loss=True,
          example=('layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
'layer { name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "y" top: "loss" propagate_down: true propagate_down: false }'))
def build_sigmoid_cross_entropy_loss(lp, bottom_shapes, ctx):
    """SigmoidCrossEntropyLoss: sum of -[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))] over positions
    whose int(t) is not loss_param.ignore_label, gradient sigmoid(x) - t; normalization as SoftmaxWithLoss
    with outer = N, inner = count / N, but the default when neither normalization nor normalize is set is
    BATCH_SIZE (Caffe's choice for this layer)."""
    x, t = bottom_shapes
    _check_first_dim(lp, ctx, bottom_shapes)
    if math.prod(x) != math.prod(t):
        raise fail(lp, ctx, f"inputs must have the same count: '{lp.bottom[0]}' {shape_str(x)}, "
                      f"'{lp.bottom[1]}' {shape_str(t)}")
    return SigmoidCrossEntropyLoss(ident(lp, ctx), _ignore(lp), normalization(lp, default="BATCH_SIZE"))


# -- HingeLoss / MultinomialLogisticLoss / ContrastiveLoss --------------------------------------------------

class HingeLoss(_Loss):
    def __init__(self, name, l2: bool):
        super().__init__(name)
        self.l2 = l2

    def forward(self, x, label):
        n = x.shape[0]
        v = x.reshape(n, -1)
        lab, _, _, _, _ = _labels(self.name, v, label, 1, None, v.shape[1])
        sign = 1 - 2 * nn.functional.one_hot(lab, v.shape[1]).to(x.dtype)  # -1 at the true class
        m = torch.relu(1 + v * sign)
        return ((m * m) if self.l2 else m).sum() / n


@register("HingeLoss", bottoms=2, tops=1, loss=True,
          example=('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 6 dim: 4 } shape { dim: 6 } } }\n'
'layer { name: "l" type: "HingeLoss" bottom: "x" bottom: "label" top: "loss" }'))
def build_hinge_loss(lp, bottom_shapes, ctx):
    """HingeLoss: with s = -1 at the true class and +1 elsewhere, loss = sum max(0, 1 + s*x)^p / N over the
    N x (count/N) scores; hinge_loss_param.norm L1 (p = 1, default) or L2 (p = 2). N labels."""
    _check_first_dim(lp, ctx, bottom_shapes)
    p = lp.hinge_loss_param
    return HingeLoss(ident(lp, ctx), p.norm == p.L2)


class MultinomialLogisticLoss(_Loss):
    def forward(self, prob, label):
        n = prob.shape[0]
        v = prob.reshape(n, -1)
        _, _, safe, _, _ = _labels(self.name, v, label, 1, None, v.shape[1])
        p = clamp_st(v.gather(1, safe[:, None]), 1e-20)
        return -torch.log(p).sum() / n  # gradient -1 / max(p, 1e-20) at the true class


@register("MultinomialLogisticLoss", bottoms=2, tops=1, loss=True,
          example=('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 6 dim: 4 } shape { dim: 6 } } }\n'
'layer { name: "s" type: "Softmax" bottom: "x" top: "p" }\n'
'layer { name: "l" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "loss" }'))
def build_multinomial_logistic_loss(lp, bottom_shapes, ctx):
    """MultinomialLogisticLoss on probabilities: -sum log(max(p[label], 1e-20)) / N (N labels)."""
    _check_first_dim(lp, ctx, bottom_shapes)
    if math.prod(bottom_shapes[1][1:]) != 1:
        raise fail(lp, ctx, f"label '{lp.bottom[1]}' {shape_str(bottom_shapes[1])} must hold one value per item")
    return MultinomialLogisticLoss(ident(lp, ctx))


class ContrastiveLoss(_Loss):
    def __init__(self, name, margin: float, legacy: bool):
        super().__init__(name)
        self.margin, self.legacy = margin, legacy

    def forward(self, a, b, y):
        n = a.shape[0]
        d = (a - b).reshape(n, -1)
        dist_sq = (d * d).sum(1)
        similar = y.detach().reshape(-1).long() != 0
        if self.legacy:
            dissim = torch.relu(self.margin - dist_sq)
        else:
            dist = dist_sq.detach().sqrt()
            # value sqrt(dist_sq); gradient d / (dist + 1e-4) as Caffe's backward (finite at dist 0)
            dist = dist + (dist_sq - dist_sq.detach()) / (2 * (dist + 1e-4))
            dissim = torch.relu(self.margin - dist) ** 2
        return torch.where(similar, dist_sq, dissim).sum() / n / 2


@register("ContrastiveLoss", bottoms=3, tops=1, loss=True,
          example=('layer { name: "in" type: "Input" top: "a" top: "b" top: "sim" input_param { shape { dim: 6 dim: 4 dim: 1 dim: 1 } shape { dim: 6 dim: 4 dim: 1 dim: 1 } shape { dim: 6 dim: 1 dim: 1 dim: 1 } } }\n'
'layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" top: "loss" propagate_down: true propagate_down: true propagate_down: false }'))
def build_contrastive_loss(lp, bottom_shapes, ctx):
    """ContrastiveLoss on pairs (a, b) of N x C (x 1 x 1) features and N similarity labels y:
    sum over pairs of d^2 if int(y) != 0 else max(margin - d, 0)^2, divided by 2N (d = ||a - b||,
    contrastive_loss_param.margin default 1); legacy_version uses max(margin - d^2, 0) instead.
    Gradient as Caffe: the dissimilar term divides by (d + 1e-4)."""
    a, b, y = bottom_shapes
    if tuple(a) != tuple(b):
        raise fail(lp, ctx, f"'{lp.bottom[0]}' {shape_str(a)} and '{lp.bottom[1]}' {shape_str(b)} must have the same shape")
    if not a or math.prod(y) != a[0]:
        raise fail(lp, ctx, f"similarity '{lp.bottom[2]}' {shape_str(y)} must hold one value per pair ({a[:1]})")
    p = lp.contrastive_loss_param
    return ContrastiveLoss(ident(lp, ctx), p.margin, p.legacy_version)
