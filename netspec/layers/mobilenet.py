"""MobileNet forks' layers: DepthwiseConvolution, ConvolutionDepthwise, ReLU6.

* ``DepthwiseConvolution`` (yonghenglh6/DepthwiseConvolution caffe/src/caffe/layers/depthwise_conv_layer.cpp,
  also in eric612/MobileNet-YOLO): a BaseConvolutionLayer whose Forward_cpu is Convolution's
  (forward_cpu_gemm with convolution_param.group), so it is built as a Convolution. (The fork's CUDA kernel
  assumes group == channels and ignores dilation; releases set group: C explicitly.)
* ``ConvolutionDepthwise`` (BVLC/caffe PR #5665 src/caffe/layers/conv_dw_layer.cpp, Forward_cpu): one
  2-D filter per input channel, top channels = bottom channels; num_output and group are not read;
  weight (C, 1, kh, kw), bias (C) when bias_term.
* ``ReLU6`` (BVLC/caffe PR src/caffe/layers/relu6_layer.cpp, also eric612/MobileNet-YOLO): y = min(max(x, 0),
  6), dy/dx = 1 only for 0 < x < 6. No parameters (MobileNet-YOLO's relu6_param.negative_slope is not in
  netspec's schema).
"""
import torch.nn.functional as F
from torch import nn

from .fillers import fill_
from ..registry import LAYERS, Export, register
from .base import example_net, fail
from .conv import Convolution, conv_geometry

_DW = "convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 weight_filler { type: 'msra' } }"


@register("DepthwiseConvolution", bottoms=(1, None), tops=(1, None),
          coord=lambda lp: LAYERS.get("Convolution").coord(lp),
          pure=True,
          blobs=("weight", "bias"),
          export=Export(),
          example=example_net("DepthwiseConvolution", _DW))
def depthwise_convolution(lp, bottom_shapes, ctx):
    """DepthwiseConvolution: every convolution_param field as Convolution (the fork's CPU path is
    Convolution's); releases give group = num_output = input channels."""
    return LAYERS.get("Convolution").builder(lp, bottom_shapes, ctx)


@register("ConvolutionDepthwise",
          coord=lambda lp: LAYERS.get("Convolution").coord(lp),
          pure=True,
          blobs=("weight", "bias"),
          export=Export(),
          example=example_net("ConvolutionDepthwise", "convolution_param { kernel_size: 3 stride: 2 pad: 1 "
                                                      "weight_filler { type: 'msra' } }"))
def convolution_depthwise(lp, bottom_shapes, ctx):
    """ConvolutionDepthwise: convolution_param kernel_size|kernel_h/w, stride|stride_h/w (1), pad|pad_h/w (0),
    dilation (1), bias_term (true), weight_filler, bias_filler; channels in = out = bottom axis 1 (2-D only).
    out = (in + 2*pad - (dilation*(k-1)+1)) // stride + 1."""
    p = lp.convolution_param
    shape = tuple(bottom_shapes[0])
    if len(shape) != 4:
        raise fail(lp, ctx, f"needs a 4-axis bottom (N, C, H, W), got shape {shape}")
    if p.axis != 1:
        raise fail(lp, ctx, f"the fork's layer works on axis 1 only, got axis {p.axis}")
    kernel, stride, pad, dilation = conv_geometry(lp, ctx, 2)
    C = shape[1]
    m = Convolution(C, C, kernel, stride, pad, dilation, C, p.bias_term, 1, False)
    fill_(m.weight, p.weight_filler)
    if m.bias is not None:
        fill_(m.bias, p.bias_filler)
    return m


class ReLU6(nn.Module):
    def forward(self, x):
        return F.hardtanh(x, 0.0, 6.0)  # gradient 0 at x <= 0 and x >= 6, as the fork's Backward_cpu


@register("ReLU6", reshape_like=True,
          pure=True,
          coord="identity",
          export=Export(),
          example=example_net("ReLU6"))
def relu6(lp, bottom_shapes, ctx):
    """ReLU6: y = min(max(x, 0), 6)."""
    return ReLU6()
