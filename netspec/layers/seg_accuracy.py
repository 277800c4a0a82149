"""SegAccuracy: DeepLab's segmentation scores from a confusion matrix; no backward.

As deeplab-public-ver2 src/caffe/layers/seg_accuracy_layer.cpp (Forward_cpu) with
src/caffe/util/confusion_matrix.cpp (accuracy, avgRecall(false), avgJaccard); DeepLab v1 is the same.

Each pixel's prediction is the class of its highest score (ties go to the HIGHER class index: DeepLab sorts
(score, class) pairs with std::greater); pixels whose label is in ``ignore_label`` are skipped, any other label
outside [0, C) is an error. The top (1, 1, 1, 3) holds, over the confusion matrix M (actual x predicted):

* pixel accuracy  trace(M) / sum(M)  (0 when M is empty),
* mean recall     mean of M[i,i] / sum_j M[i,j] over the classes that occur (0 when none does),
* mean IU         mean over ALL C classes of M[i,i] / (row_i + col_i - M[i,i]), a class with an empty
  union counting 1.

``reset: true`` (the default) starts M afresh at every forward; ``reset: false`` accumulates it over every
forward of the net's life (DeepLab's test prototxts use this to score a whole test run).
"""
import torch
from torch import nn

from ..errors import LayerError
from ..registry import Export, register
from .base import concrete, fail, ident, shape_str


class SegAccuracy(nn.Module):
    def __init__(self, name: str, classes: int, ignore, reset: bool):
        super().__init__()
        self.name, self.classes, self.ignore, self.reset = name, classes, tuple(sorted(ignore)), reset
        self.register_buffer("confusion", torch.zeros(classes, classes, dtype=torch.float64), persistent=False)

    def top_shapes(self, bottom_shapes):
        return [(1, 1, 1, 3)]

    @torch.no_grad()
    def forward(self, x, label):
        C = self.classes
        x = x.detach()
        pred = (C - 1) - x.flip(1).argmax(1)  # the last of equal maxima, as DeepLab's std::greater sort
        lab = label.detach()[:, 0].to(torch.int64)  # static_cast<int>: truncation toward zero
        keep = torch.ones_like(lab, dtype=torch.bool)
        for v in self.ignore:
            keep &= lab != v
        bad = keep & ((lab < 0) | (lab >= C))
        if concrete(x) and bool(bad.any()):
            n, h, w = (int(i) for i in bad.nonzero()[0])
            raise LayerError(f"{self.name}: unexpected label {int(lab[n, h, w])} at num {n} row {h} col {w} "
                             f"(labels must be in [0, {C}) or one of ignore_label {list(self.ignore)})")
        keep &= ~bad
        idx = torch.where(keep, lab * C + pred, torch.zeros_like(lab)).reshape(-1)
        counts = torch.zeros(C * C, dtype=torch.float64, device=x.device)
        counts = counts.scatter_add(0, idx, keep.reshape(-1).to(torch.float64)).reshape(C, C)
        if self.reset:
            m = counts
            self.confusion.copy_(m)
        else:
            self.confusion += counts
            m = self.confusion
        diag = m.diagonal()
        total, rows, cols = m.sum(), m.sum(1), m.sum(0)
        zero = torch.zeros((), dtype=torch.float64, device=x.device)
        acc = torch.where(total > 0, diag.sum() / total.clamp_min(1), zero)
        present = rows > 0
        recall = torch.where(present, diag / rows.clamp_min(1), zero)
        npresent = present.sum()
        mrecall = torch.where(npresent > 0, recall.sum() / npresent.clamp_min(1), zero)
        union = rows + cols - diag
        iou = torch.where(diag == union, torch.ones_like(diag), diag / union.clamp_min(1))
        out = torch.stack([acc, mrecall, iou.mean()]).to(x.dtype if x.is_floating_point() else torch.float32)
        return out.reshape(1, 1, 1, 3)

    def extra_repr(self):
        return f"classes={self.classes}, ignore_label={list(self.ignore)}, reset={self.reset}"


@register("SegAccuracy", bottoms=2, tops=1,
          export=Export(refuse="is an evaluation layer: export a deploy prototxt without it"),
          example=('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 2 dim: 4 '
                   'dim: 5 dim: 6 } shape { dim: 2 dim: 1 dim: 5 dim: 6 } } }\n'
                   'layer { name: "l" type: "SegAccuracy" bottom: "x" bottom: "label" top: "y" '
                   'seg_accuracy_param { ignore_label: 255 } }'),
          backward=False)
def build_seg_accuracy(lp, bottom_shapes, ctx):
    """SegAccuracy: scores (N, C, H, W), label (N, 1, H, W); seg_accuracy_param ignore_label (repeated),
    reset (true). Top (1, 1, 1, 3): pixel accuracy, mean class recall, mean IU (``metric`` is unused, as in
    DeepLab)."""
    x, label = (tuple(s) for s in bottom_shapes)
    if len(x) != 4 or len(label) != 4:
        raise fail(lp, ctx, f"scores and label must have 4 axes (N, C, H, W), got {shape_str(x)} and "
                            f"{shape_str(label)}")
    if x[1] < 1:
        raise fail(lp, ctx, "the scores need at least one channel (class)")
    if x[0] != label[0] or label[1] != 1 or x[2:] != label[2:]:
        raise fail(lp, ctx, f"label '{lp.bottom[1]}' {shape_str(label)} must be (N, 1, H, W) of scores "
                            f"'{lp.bottom[0]}' {shape_str(x)}")
    p = lp.seg_accuracy_param
    return SegAccuracy(ident(lp, ctx), x[1], set(p.ignore_label), p.reset)
