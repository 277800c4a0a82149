"""Element-wise neuron layers (Caffe's NeuronLayer family): ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL,
Power, Exp, Log, Threshold, Clip, Swish, Dropout. Each maps one bottom to one top of the same shape."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .fillers import fill_
from ..proto import caffe_pb2
from ..registry import Export, register
from .base import example_net, fail


@register("ReLU", reshape_like=True,
          pure=True,
          coord="identity",
          colour="#90EE90",
          example=example_net("ReLU"))
def relu(lp, bottom_shapes, ctx):
    """ReLU: relu_param.negative_slope. y = max(0, x) + negative_slope * min(0, x)."""
    slope = lp.relu_param.negative_slope
    return nn.LeakyReLU(slope) if slope else nn.ReLU()


class PReLU(nn.Module):
    """y = max(0, x) + a * min(0, x); ``weight`` is (C,) for axis 1, or a 0-d blob when channel_shared."""

    def __init__(self, channels=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(()) if channels is None else torch.empty(channels))

    def forward(self, x):
        return F.prelu(x, self.weight.reshape(1) if self.weight.dim() == 0 else self.weight)

    def extra_repr(self):
        return f"weight={tuple(self.weight.shape)}"


@register("PReLU", reshape_like=True,
          pure=True,
          coord="identity",
          blobs=('weight',),
          example=example_net("PReLU"))
def prelu(lp, bottom_shapes, ctx):
    """PReLU: prelu_param channel_shared, filler (absent = constant 0.25, Caffe's C++ default).

    y = max(0, x) + a_c * min(0, x) with one slope per channel (axis 1), or one 0-d slope for all.
    """
    p = lp.prelu_param
    shape = bottom_shapes[0]
    if len(shape) < 2:
        raise fail(lp, ctx, f"needs a bottom with at least 2 axes, got shape {tuple(shape)}")
    m = PReLU(None if p.channel_shared else shape[1])
    if p.HasField("filler"):
        fill_(m.weight, p.filler)
    else:
        nn.init.constant_(m.weight, 0.25)
    return m


@register("ELU", reshape_like=True,
          pure=True,
          coord="identity",
          example=example_net("ELU"))
def elu(lp, bottom_shapes, ctx):
    """ELU: elu_param.alpha. y = x if x > 0 else alpha * (exp(x) - 1)."""
    return nn.ELU(lp.elu_param.alpha)


@register("Sigmoid", reshape_like=True,
          pure=True,
          coord="identity",
          example=example_net("Sigmoid"))
def sigmoid(lp, bottom_shapes, ctx):
    """Sigmoid: y = 1 / (1 + exp(-x)) (Caffe evaluates 0.5 * tanh(0.5 x) + 0.5; same up to rounding)."""
    return nn.Sigmoid()


@register("TanH", reshape_like=True,
          pure=True,
          coord="identity",
          example=example_net("TanH"))
def tanh(lp, bottom_shapes, ctx):
    """TanH: y = tanh(x)."""
    return nn.Tanh()


class AbsVal(nn.Module):
    def forward(self, x):
        return x.abs()


@register("AbsVal", reshape_like=True,
          pure=True,
          coord="identity",
          example=example_net("AbsVal"))
def absval(lp, bottom_shapes, ctx):
    """AbsVal: y = |x|, dy/dx = sign(x) (0 at 0)."""
    return AbsVal()


_BNLL_THRESHOLD = 50.0  # Caffe's kBNLL_THRESHOLD: exp() is clamped there in backward only


class _BNLLFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x > 0, x + torch.log(1 + torch.exp(-x)), torch.log(1 + torch.exp(x)))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        e = torch.exp(torch.clamp(x, max=_BNLL_THRESHOLD))
        return g * e / (e + 1)


class BNLL(nn.Module):
    def forward(self, x):
        return _BNLLFunction.apply(x)


class DeployBNLL(nn.Module):
    """For export: BNLL without the custom autograd Function."""

    def forward(self, x):
        return torch.where(x > 0, x + torch.log(1 + torch.exp(-x)), torch.log(1 + torch.exp(x)))


@register("BNLL", reshape_like=True,
          coord="identity",
          export=Export(deploy=lambda m, dynamic_hw: DeployBNLL()),
          example=example_net("BNLL"))
def bnll(lp, bottom_shapes, ctx):
    """BNLL: y = log(1 + exp(x)), evaluated as x + log(1 + exp(-x)) for x > 0.

    Caffe's backward: dy/dx = e / (e + 1) with e = exp(min(x, 50)) (autograd would give NaN past exp overflow).
    """
    return BNLL()


def _cpow(a, b):
    """C's pow(): inf for 0^negative and on overflow, NaN for a negative base with a fractional exponent."""
    try:
        return math.pow(a, b)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.inf if a == 0 else math.nan


class Power(nn.Module):
    """y = (shift + scale * x) ^ power, evaluated in Caffe's order (no op where a term is trivial)."""

    def __init__(self, power, scale, shift):
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift

    def forward(self, x):
        if self.power == 0 or self.scale == 0:
            # Caffe writes the constant 1 (power 0) or shift^power, and a zero gradient.
            return x * 0.0 + (1.0 if self.power == 0 else _cpow(self.shift, self.power))
        y = x * self.scale if self.scale != 1 else x
        if self.shift != 0:
            y = y + self.shift
        return y.pow(self.power) if self.power != 1 else y

    def extra_repr(self):
        return f"power={self.power}, scale={self.scale}, shift={self.shift}"


@register("Power", reshape_like=True,
          pure=True,
          coord="identity",
          example=example_net("Power", 'power_param { power: 2 }'))
def power(lp, bottom_shapes, ctx):
    """Power: power_param power (1), scale (1), shift (0). y = (shift + scale * x) ^ power.

    Caffe's backward divides y by the base (power * y / x, or diff_scale * y / (shift + scale*x)), which is
    NaN where the base is 0; autograd gives power * scale * base^(power-1) there instead.
    """
    p = lp.power_param
    return Power(p.power, p.scale, p.shift)


class Exp(nn.Module):
    """y = outer * exp(inner * x) with inner = scale * ln(base), outer = base^shift (base e when base = -1)."""

    def __init__(self, inner, outer):
        super().__init__()
        self.inner, self.outer = inner, outer

    def forward(self, x):
        y = torch.exp(x * self.inner if self.inner != 1 else x)
        return y * self.outer if self.outer != 1 else y

    def extra_repr(self):
        return f"inner_scale={self.inner}, outer_scale={self.outer}"


@register("Exp", reshape_like=True,
          coord="identity",
          example=example_net("Exp"))
def exp(lp, bottom_shapes, ctx):
    """Exp: exp_param base (-1 = e), scale (1), shift (0). y = base ^ (shift + scale * x)."""
    p = lp.exp_param
    if p.base != -1 and p.base <= 0:
        raise fail(lp, ctx, f"base must be strictly positive (or -1 for e), got {p.base}")
    log_base = 1.0 if p.base == -1 else math.log(p.base)
    outer = 1.0 if p.shift == 0 else _cpow(math.e if p.base == -1 else p.base, p.shift)
    return Exp(log_base * p.scale, outer)


class Log(nn.Module):
    """y = log(shift + scale * x) / ln(base) (natural log when base = -1)."""

    def __init__(self, scale, shift, base_scale):
        super().__init__()
        self.scale, self.shift, self.base_scale = scale, shift, base_scale

    def forward(self, x):
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        y = torch.log(x)
        return y * self.base_scale if self.base_scale != 1 else y

    def extra_repr(self):
        return f"scale={self.scale}, shift={self.shift}, base_scale={self.base_scale}"


@register("Log", reshape_like=True,
          coord="identity",
          example=('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
'layer { name: "l" type: "Power" bottom: "x" top: "p" power_param { shift: 10 } }\n'
'layer { name: "lg" type: "Log" bottom: "p" top: "y" }'))
def log(lp, bottom_shapes, ctx):
    """Log: log_param base (-1 = e), scale (1), shift (0). y = log_base(shift + scale * x)."""
    p = lp.log_param
    if p.base != -1 and p.base <= 0:
        raise fail(lp, ctx, f"base must be strictly positive (or -1 for e), got {p.base}")
    return Log(p.scale, p.shift, 1.0 if p.base == -1 else 1.0 / math.log(p.base))


class Threshold(nn.Module):
    def __init__(self, threshold):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        return (x > self.threshold).to(x.dtype)

    def extra_repr(self):
        return f"threshold={self.threshold}"


@register("Threshold", reshape_like=True,
          coord="identity",
          example=example_net("Threshold"),
          backward=False)
def threshold(lp, bottom_shapes, ctx):
    """Threshold: threshold_param.threshold (0). y = 1 if x > threshold else 0; no gradient (Caffe has no backward)."""
    return Threshold(lp.threshold_param.threshold)


class Clip(nn.Module):
    def __init__(self, lo, hi):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return torch.clamp(x, self.lo, self.hi)

    def extra_repr(self):
        return f"min={self.lo}, max={self.hi}"


@register("Clip", reshape_like=True,
          coord="identity",
          export=Export(min_opset=11, needs='Clip with min/max inputs'),
          example=example_net("Clip", 'clip_param { min: -1 max: 1 }'))
def clip(lp, bottom_shapes, ctx):
    """Clip: clip_param min, max. y = max(min, min(x, max)); gradient passes where min <= x <= max."""
    p = lp.clip_param
    if p.min > p.max:
        raise fail(lp, ctx, f"min ({p.min}) must not exceed max ({p.max})")
    return Clip(p.min, p.max)


class Swish(nn.Module):
    def __init__(self, beta):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return x * torch.sigmoid(x * self.beta)

    def extra_repr(self):
        return f"beta={self.beta}"


@register("Swish", reshape_like=True,
          coord="identity",
          example=example_net("Swish"))
def swish(lp, bottom_shapes, ctx):
    """Swish: swish_param.beta (1). y = x * sigmoid(beta * x)."""
    return Swish(lp.swish_param.beta)


class Dropout(nn.Module):
    """Inverted dropout in TRAIN phase (keep with probability 1-p, scale by 1/(1-p)); identity in TEST."""

    def __init__(self, ratio, train):
        super().__init__()
        self.ratio, self.train_phase = ratio, train

    keep = 1.0  # caffe-fast-rcnn's scale_train: false multiplies both phases by 1 - ratio

    def forward(self, x):
        y = F.dropout(x, self.ratio, training=True) if self.train_phase and self.ratio > 0 else x
        return y * self.keep if self.keep != 1.0 else y

    def extra_repr(self):
        return f"ratio={self.ratio}, phase={'TRAIN' if self.train_phase else 'TEST'}"


@register("Dropout", reshape_like=True,
          pure=True,
          coord="identity",
          example=example_net("Dropout"))
def dropout(lp, bottom_shapes, ctx):
    """Dropout: dropout_param.dropout_ratio (0.5). The phase (not module.train()/eval()) picks the mode."""
    ratio = lp.dropout_param.dropout_ratio
    if not 0 <= ratio < 1:
        raise fail(lp, ctx, f"dropout_ratio must be in [0, 1), got {ratio}")
    # SegNet / ENet sample_weights_test: drop in TEST phase too (Bayesian SegNet's Monte Carlo dropout).
    m = Dropout(ratio, ctx.phase == caffe_pb2.TRAIN or lp.dropout_param.sample_weights_test)
    if not lp.dropout_param.scale_train:  # caffe-fast-rcnn dropout_layer.cpp: mask without 1/(1-p); TEST * (1-p)
        m.keep = 1.0 - ratio
    return m
