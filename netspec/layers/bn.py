"""BN: the batch normalization layer of two Caffe forks that share the type name and ``bn_param``.

* **PSPNet** (hszhao/PSPNet src/caffe/layers/bn_layer.cpp, ``LayerSetUp``, ``Forward_cpu``, ``Backward_cpu``):
  4 blobs, each 1 x C x 1 x 1: slope, bias, moving mean, moving variance. With ``frozen`` or in TEST phase the
  stored statistics normalise; otherwise the batch's (mean and biased variance over N, H, W), and the blobs
  are updated as ``stat = (1 - momentum) * batch_stat + momentum * stat`` (the biased variance is averaged).
  y = slope * (x - mean) / sqrt(var + eps) + bias. ``frozen`` also forces lr_mult 0 on every blob and the
  backward computes no slope/bias gradient (here: those parameters do not require grad).
* **SegNet / ENet** (alexgkendall/caffe-segnet and TimoSaemann/caffe-enet src/caffe/layers/bn_layer.cpp,
  the same code): 2 blobs, 1 x C x 1 x 1: scale, shift. ``bn_mode: LEARN`` (in every phase) normalises with
  the batch's mean and variance E[x^2] - E[x]^2 and eps 1e-9 (hard-coded); optional tops 2 and 3 are the
  batch mean and variance (1 x C x 1 x 1, no gradient flows back through them). ``INFERENCE``: y = scale *
  x + shift (SegNet's compute_bn_statistics.py folds the statistics into scale and shift).

Which fork a layer means: from the ``bn_param`` fields it sets (PSPNet's ``slope_filler``, ``bias_filler``,
``momentum``, ``eps``, ``frozen``, ``engine``; SegNet's ``scale_filler``, ``shift_filler``, ``bn_mode``), then
from the net's dialect (``ctx.dialect``: "pspnet", or "segnet" / "enet"), then from the layer's param specs
(4: PSPNet, 2: SegNet) and tops (more than one: SegNet).

One difference from the forks: in TEST phase a non-frozen PSPNet BN backpropagates the true gradient of its
forward (stored statistics); the fork's Backward_cpu applies its batch-statistics formula to them.
"""
import torch
from torch import nn

from .fillers import fill_
from ..proto import caffe_pb2
from ..registry import register
from .base import example_net, fail

PSPNET_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")
SEGNET_FIELDS = ("scale_filler", "shift_filler", "bn_mode")
SEGNET_EPS = 1e-9  # caffe-segnet BNLayer::LayerSetUp: var_eps_ = 1e-9, not a parameter


def _dims(x):
    return [d for d in range(x.dim()) if d != 1]


def _channel(t, x):
    """A 1 x C x 1 x 1 blob (or a length-C vector) broadcast against ``x`` (N x C x ...)."""
    return t.reshape([1, -1] + [1] * (x.dim() - 2))


class PSPNetBN(nn.Module):
    """PSPNet's BN. Blobs: slope, bias, mean, variance (1 x C x 1 x 1). ``batch_stats``: TRAIN and not frozen."""

    def __init__(self, channels, momentum, eps, frozen, batch_stats):
        super().__init__()
        self.slope = nn.Parameter(torch.empty(1, channels, 1, 1), requires_grad=not frozen)
        self.bias = nn.Parameter(torch.empty(1, channels, 1, 1), requires_grad=not frozen)
        self.mean = nn.Parameter(torch.zeros(1, channels, 1, 1), requires_grad=False)
        # LayerSetUp: the variance starts at 1 when frozen, 0 otherwise.
        self.variance = nn.Parameter(torch.full((1, channels, 1, 1), 1.0 if frozen else 0.0), requires_grad=False)
        self.momentum, self.eps, self.frozen, self.batch_stats = momentum, eps, frozen, batch_stats
        #: Blob indices that PSPNet's LayerSetUp forces to lr_mult 0 and decay_mult 0.
        self.fixed_blobs = (0, 1, 2, 3) if frozen else (2, 3)

    @property
    def updates_state(self) -> bool:
        """The forward updates the moving averages (batch statistics): not safe to recompute or export."""
        return self.batch_stats

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        if self.batch_stats and x.dtype == torch.float32 and x.dim() > 1 and x.numel() > x.shape[1]:
            return self._batch_kernel(x)
        if self.batch_stats:
            dims = _dims(x)
            mean = x.mean(dims)
            xc = x - _channel(mean, x)
            var = (xc * xc).mean(dims)
            self._average(mean.detach(), var.detach())
        else:
            xc = x - _channel(self.mean, x)
            var = self.variance
        x_hat = xc * _channel(torch.pow(var + self.eps, -0.5), x)
        return x_hat * _channel(self.slope, x) + _channel(self.bias, x)

    def _batch_kernel(self, x):
        """The batch-statistics forward as torch's one-pass batch_norm kernel (the same formulas: mean and biased
        variance over N, H, W; (var + eps)^-1/2): its running-statistics update with momentum 1 into zeroed
        buffers yields the batch mean and the unbiased variance, which is turned back into the biased one that
        PSPNet averages into its blob."""
        c = x.shape[1]
        mean = torch.zeros(c, dtype=x.dtype, device=x.device)
        unbiased = torch.ones(c, dtype=x.dtype, device=x.device)
        y = torch.batch_norm(x, self.slope.reshape(-1), self.bias.reshape(-1), mean, unbiased, True, 1.0, self.eps,
                             False)
        n = x.numel() // c
        self._average(mean, unbiased * ((n - 1) / n))
        return y

    def _average(self, mean, var):
        """PSPNet's moving averages: stat = (1 - momentum) * batch stat + momentum * stat (biased variance)."""
        with torch.no_grad():
            m = self.momentum
            self.mean.copy_((1 - m) * mean.reshape(self.mean.shape) + m * self.mean)
            self.variance.copy_((1 - m) * var.reshape(self.variance.shape) + m * self.variance)

    def affine(self):
        """(k, b), per channel, with y = k * x + b when the stored statistics normalise; None with batch
        statistics. For inference folding into a preceding convolution."""
        if self.batch_stats:
            return None
        k = self.slope.reshape(-1) * torch.pow(self.variance.reshape(-1) + self.eps, -0.5)
        return k, self.bias.reshape(-1) - self.mean.reshape(-1) * k

    def extra_repr(self):
        stats = "batch" if self.batch_stats else "stored"
        return (f"PSPNet, {self.slope.shape[1]}, stats={stats}, momentum={self.momentum}, eps={self.eps}, "
                f"frozen={self.frozen}")


class SegNetBN(nn.Module):
    """SegNet's / ENet's BN. Blobs: scale, shift (1 x C x 1 x 1). ``learn``: bn_mode LEARN (every phase)."""

    def __init__(self, channels, learn, n_tops):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.empty(1, channels, 1, 1))
        self.learn, self.n_tops = learn, n_tops

    def top_shapes(self, bottom_shapes):
        c = bottom_shapes[0][1]
        return [tuple(bottom_shapes[0])] + [(1, c, 1, 1)] * (self.n_tops - 1)

    def forward(self, x):
        if not self.learn:
            return x * _channel(self.scale, x) + _channel(self.shift, x)
        dims = _dims(x)
        mean = x.mean(dims)
        var = (x * x).mean(dims) - mean * mean  # Forward_cpu: var(X) = E(X^2) - (EX)^2
        x_hat = (x - _channel(mean, x)) / _channel(torch.sqrt(var + SEGNET_EPS), x)
        y = x_hat * _channel(self.scale, x) + _channel(self.shift, x)
        if self.n_tops == 1:
            return y
        stats = (mean.detach().reshape(1, -1, 1, 1), var.detach().reshape(1, -1, 1, 1))
        return (y,) + stats[:self.n_tops - 1]

    def affine(self):
        """(k, b), per channel, with y = k * x + b in bn_mode INFERENCE; None in LEARN (batch statistics)."""
        return None if self.learn else (self.scale.reshape(-1), self.shift.reshape(-1))

    def extra_repr(self):
        return f"SegNet, {self.scale.shape[1]}, bn_mode={'LEARN' if self.learn else 'INFERENCE'}"


def fork_of(lp, ctx) -> str:
    """"pspnet" or "segnet": whose BN ``lp`` is (rules in the module docstring)."""
    p = lp.bn_param
    psp = [f for f in PSPNET_FIELDS if p.HasField(f)]
    seg = [f for f in SEGNET_FIELDS if p.HasField(f)]
    if psp and seg:
        raise fail(lp, ctx, f"bn_param mixes PSPNet's fields ({', '.join(psp)}) with SegNet's ({', '.join(seg)}); "
                            "a BN layer is one fork's or the other's")
    if psp or seg:
        return "pspnet" if psp else "segnet"
    dialect = getattr(ctx, "dialect", None)
    if dialect == "pspnet":
        return "pspnet"
    if dialect in ("segnet", "enet"):
        return "segnet"
    if len(lp.param) in (3, 4):
        return "pspnet"
    if len(lp.param) == 2 or len(lp.top) > 1:
        return "segnet"
    raise fail(lp, ctx, "cannot tell PSPNet's BN from SegNet's: set a bn_param field (PSPNet: slope_filler, "
                        "bias_filler, momentum, eps, frozen; SegNet/ENet: scale_filler, shift_filler, bn_mode) or "
                        "give the net a dialect (Net(..., dialect='pspnet' | 'segnet'))")


@register("BN", bottoms=1, tops=(1, 3),
          pure=True,
          coord="identity",
          example=example_net("BN", 'bn_param { scale_filler { type: "constant" value: 1 } '
                                    'shift_filler { type: "constant" value: 0.1 } }'))
def bn(lp, bottom_shapes, ctx):
    """BN (PSPNet / SegNet / ENet): bn_param as the module docstring; bottom N x C x ... (statistics per
    channel over every other axis). PSPNet: 1 top; SegNet: 1 to 3 tops (y, batch mean, batch variance).
    Parameter blobs are filled with the fork's fillers (absent = constant 0, Caffe's default)."""
    p = lp.bn_param
    shape = tuple(bottom_shapes[0])
    if len(shape) < 2:
        raise fail(lp, ctx, f"bottom must have a channel axis (N x C x ...), got shape {shape}")
    channels = shape[1]
    if fork_of(lp, ctx) == "pspnet":
        if len(lp.top) != 1:
            raise fail(lp, ctx, f"PSPNet's BN has exactly 1 top, the prototxt names {len(lp.top)}")
        batch_stats = not p.frozen and ctx.phase == caffe_pb2.TRAIN
        m = PSPNetBN(channels, p.momentum, p.eps, p.frozen, batch_stats)
        fill_(m.slope.data, p.slope_filler)
        fill_(m.bias.data, p.bias_filler)
        return m
    learn = p.bn_mode == p.LEARN
    if len(lp.top) > 1 and not learn:
        raise fail(lp, ctx, "the batch mean / variance tops exist in bn_mode LEARN only")
    m = SegNetBN(channels, learn, len(lp.top))
    fill_(m.scale.data, p.scale_filler)
    fill_(m.shift.data, p.shift_filler)
    return m
