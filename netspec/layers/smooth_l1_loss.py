"""SmoothL1Loss: Fast/Faster R-CNN's box-regression loss (``SmoothL1LossParameter``, a netspec schema extension
at caffe-fast-rcnn's own number 8266712).

Followed: rbgirshick/caffe-fast-rcnn (branch faster-rcnn) src/caffe/layers/smooth_L1_loss_layer.cu,
SmoothL1Forward / Forward_gpu and SmoothL1Backward / Backward_gpu (the fork's CPU versions are
NOT_IMPLEMENTED), and smooth_L1_loss_layer.cpp, Reshape (shape checks).
"""
import torch

from ..registry import Export, register
from .base import example_net, fail, ident
from .loss import _Loss


class SmoothL1Loss(_Loss):
    """loss = sum(w_out * f(w_in * (a - b))) / N, f(d) = 0.5 * sigma^2 * d^2 where |d| < 1 / sigma^2, else
    |d| - 0.5 / sigma^2; N = a.shape[0]. Gradients to a and b (the fork's AllowForceBackward is true for all
    bottoms, but its Backward writes only bottoms 0 and 1): the weights get none."""

    def __init__(self, name, sigma2):
        super().__init__(name)
        self.sigma2 = sigma2

    def forward(self, a, b, w_in=None, w_out=None):
        d = a - b.reshape(a.shape)
        if w_in is not None:
            d = w_in.detach().reshape(d.shape) * d
        ad = d.abs()
        err = torch.where(ad < 1.0 / self.sigma2, 0.5 * d * d * self.sigma2, ad - 0.5 / self.sigma2)
        if w_out is not None:
            err = w_out.detach().reshape(err.shape) * err
        return err.sum() / a.shape[0]

    def extra_repr(self):
        return f"sigma^2={self.sigma2}"


_SHAPES = ((2, 8, 1, 1),) * 4


def _legacy(shape):
    return tuple(shape) + (1,) * (4 - len(shape)) if len(shape) <= 4 else tuple(shape)


@register("SmoothL1Loss", bottoms=(2, 4), tops=1, loss=True,
          export=Export(refuse="is a loss layer: export a deploy prototxt without it"),
          example=example_net("SmoothL1Loss", "smooth_l1_loss_param { sigma: 3 }", inputs=_SHAPES,
                              names=("x", "x1", "x2", "x3")))
def smooth_l1_loss(lp, bottom_shapes, ctx):
    """SmoothL1Loss: smooth_l1_loss_param.sigma (1). Bottoms: predictions, targets, and optionally inside and
    outside weights (both or neither), all with the same C x H x W and the same num."""
    shapes = [tuple(s) for s in bottom_shapes]
    if len(shapes) == 3:
        raise fail(lp, ctx, "if weights are used, give both inside and outside weights (4 bottoms)")
    a = shapes[0]
    for i, s in enumerate(shapes[1:], 1):  # Caffe compares num, channels, height, width (legacy 4-D view)
        if _legacy(s) != _legacy(a):
            raise fail(lp, ctx, f"bottom {i} '{lp.bottom[i]}' {s} must have the num, channels, height and width "
                                f"of bottom 0 '{lp.bottom[0]}' {a}")
    sigma = lp.smooth_l1_loss_param.sigma
    return SmoothL1Loss(ident(lp, ctx), sigma * sigma)
