"""Accuracy (Caffe AccuracyLayer): top-k classification accuracy, optionally per class; no backward."""
import math

import torch
from torch import nn

from ..registry import Export, register
from .base import canonical_axis, fail, ident, shape_str
from .loss import _labels


class Accuracy(nn.Module):
    def __init__(self, name, axis, top_k, ignore, per_class: bool):
        super().__init__()
        self.name, self.axis, self.top_k, self.ignore, self.per_class = name, axis, top_k, ignore, per_class

    #: caffe-segnet accuracy_layer.cpp: the per-class top is C x 1 x 1 x 1 and a class never labelled scores 1
    segnet = False

    def top_shapes(self, bottom_shapes):
        c = bottom_shapes[0][self.axis]
        return [()] + ([(c, 1, 1, 1) if self.segnet else (c,)] if self.per_class else [])

    @torch.no_grad()
    def forward(self, x, label):
        a, C = self.axis, x.shape[self.axis]
        x = x.detach()
        lab, valid, safe, _, _ = _labels(self.name, x, label, a, self.ignore, C)
        true = x.gather(a, safe.unsqueeze(a))
        # Caffe counts the scores >= the true class's score (itself included): correct iff at most top_k
        correct = ((x >= true).sum(a) <= self.top_k).to(x.dtype)
        valid = torch.ones_like(correct) if valid is None else valid.to(x.dtype)
        hits, count = (correct * valid).sum(), valid.sum()
        acc = torch.where(count > 0, hits / count.clamp_min(1), torch.zeros_like(hits))
        if not self.per_class:
            return acc
        zeros = torch.zeros(C, dtype=x.dtype, device=x.device)
        nums = zeros.scatter_add(0, safe.reshape(-1), valid.reshape(-1))
        wins = zeros.scatter_add(0, safe.reshape(-1), (correct * valid).reshape(-1))
        per = torch.where(nums > 0, wins / nums.clamp_min(1), zeros + float(self.segnet))
        return acc, (per.reshape(C, 1, 1, 1) if self.segnet else per)


@register("Accuracy", bottoms=2, tops=(1, 2),
          export=Export(refuse='is an evaluation layer: export a deploy prototxt without it'),
          example=('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 6 dim: 4 } shape { dim: 6 } } }\n'
'layer { name: "l" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" }'),
          backward=False)
def build_accuracy(lp, bottom_shapes, ctx):
    """Accuracy: fraction of label positions whose true class is among the accuracy_param.top_k
    (default 1) highest scores along axis (default 1), ties counting against (#scores >= true score must be
    <= top_k); positions labelled ignore_label (when set) are skipped; 0 when none is left.
    Top 0 is a scalar; optional top 1 is the per-class accuracy (C,), 0 for classes never labelled."""
    x, label = bottom_shapes
    p = lp.accuracy_param
    axis = canonical_axis(lp, ctx, p.axis, len(x))
    outer, inner = math.prod(x[:axis]), math.prod(x[axis + 1:])
    if math.prod(label) != outer * inner:
        raise fail(lp, ctx, f"number of labels must match number of predictions: scores '{lp.bottom[0]}' "
                      f"{shape_str(x)} (axis {axis}) need {outer * inner} labels, label '{lp.bottom[1]}' "
                      f"{shape_str(label)} has {math.prod(label)}")
    if p.top_k > x[axis]:
        raise fail(lp, ctx, f"top_k {p.top_k} must be at most the number of classes {x[axis]}")
    ignore = p.ignore_label if p.HasField("ignore_label") else None
    m = Accuracy(ident(lp, ctx), axis, p.top_k, ignore, len(lp.top) > 1)
    m.segnet = getattr(ctx, "dialect", None) == "segnet"
    return m
