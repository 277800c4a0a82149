"""LRN, BatchNorm and MVN (Caffe ``LRNParameter``, ``BatchNormParameter``, ``MVNParameter``)."""
import torch
import torch.nn.functional as F
from torch import nn

from ..proto import caffe_pb2
from ..registry import Export, register
from .base import example_net, fail


class LRN(nn.Module):
    """ACROSS_CHANNELS: y = x * (k + alpha/n * sum_{n channels} x^2)^-beta (window centred on the channel).
    WITHIN_CHANNEL: y = x * (1 + alpha * avg_{n x n} x^2)^-beta, the average always dividing by n^2 (Caffe
    builds it from AVE pooling with pad (n-1)/2, which counts the zero padding); k is not used."""

    def __init__(self, size, alpha, beta, k, within):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.within = size, alpha, beta, k, within

    def forward(self, x):
        if not self.within:
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        s = F.avg_pool2d(x * x, self.size, 1, (self.size - 1) // 2, count_include_pad=True)
        return x * (s * self.alpha + 1).pow(-self.beta)

    def extra_repr(self):
        region = "WITHIN_CHANNEL" if self.within else "ACROSS_CHANNELS"
        return f"{region}, local_size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


@register("LRN", reshape_like=True,
          pure=True,
          coord="identity",
          example=example_net("LRN", 'lrn_param { local_size: 3 }'))
def lrn(lp, bottom_shapes, ctx):
    """LRN: lrn_param local_size (5, odd), alpha (1), beta (0.75), k (1), norm_region (ACROSS_CHANNELS).
    Formulas in ``LRN``; bottom N x C x H x W."""
    p = lp.lrn_param
    if len(bottom_shapes[0]) != 4:
        raise fail(lp, ctx, f"input must have 4 axes (N, C, H, W), got shape {tuple(bottom_shapes[0])}")
    if p.local_size % 2 == 0:
        raise fail(lp, ctx, f"LRN only supports odd values for local_size, got {p.local_size}")
    n, c, h, w = bottom_shapes[0]
    within = p.norm_region == p.WITHIN_CHANNEL
    # The zero-padded square of the input (channels, or H and W, padded by (local_size - 1) / 2 each side) is a
    # blob in Caffe: refuse, before allocating, a window that makes it exceed Caffe's INT_MAX limit per blob.
    padded = n * c * (h + p.local_size - 1) * (w + p.local_size - 1) if within else \
        n * (c + p.local_size - 1) * h * w
    if padded > 2 ** 31 - 1:
        raise fail(lp, ctx, f"local_size {p.local_size} pads the {tuple(bottom_shapes[0])} input to {padded} "
                            "elements, more than Caffe's INT_MAX per blob; use a window no larger than the "
                            f"{'image' if within else 'channel count'}")
    return LRN(p.local_size, p.alpha, p.beta, p.k, p.norm_region == p.WITHIN_CHANNEL)


class BatchNorm(nn.Module):
    """Caffe BatchNorm (no affine part; Caffe nets follow it with a Scale layer).

    Blobs: mean_acc (C), var_acc (C), scale_factor (1), never trained. Global statistics are
    acc / scale_factor (0 when scale_factor is 0). With batch statistics (mean and biased variance over every
    axis but 1) the forward also updates, in place:
        scale_factor = maf * scale_factor + 1
        mean_acc     = maf * mean_acc + mean
        var_acc      = maf * var_acc + m/(m-1) * var       (m = count / C, factor 1 if m == 1)
    y = (x - mean) / sqrt(var + eps).
    """

    def __init__(self, channels, use_global_stats, maf, eps):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.variance = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.scale_factor = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.use_global_stats, self.maf, self.eps = use_global_stats, maf, eps
        #: Set while activation checkpointing recomputes the forward: same output, accumulators left alone.
        self.hold_state = False

    @property
    def updates_state(self) -> bool:
        """The forward updates the accumulators (batch statistics): not safe to recompute or export."""
        return not self.use_global_stats

    def top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        if self._fused_ok(x):
            return self.fused(x)
        shape = [1] * x.dim()
        shape[min(1, x.dim() - 1)] = -1
        if x.dim() == 1:  # Caffe: a 1-axis bottom has one channel
            shape[0] = 1
        if self.use_global_stats:
            sf = self.scale_factor
            inv = torch.where(sf == 0, torch.zeros_like(sf), 1 / sf)
            mean, var = self.mean * inv, self.variance * inv
        else:
            dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 1 else [0]
            mean = x.mean(dims)
            xc = x - mean.reshape(shape)
            var = (xc * xc).mean(dims)
            m = x.numel() // mean.numel()
            if not self.hold_state:
                with torch.no_grad():
                    self.scale_factor.mul_(self.maf).add_(1)
                    self.mean.mul_(self.maf).add_(mean)
                    self.variance.mul_(self.maf).add_(var, alpha=m / (m - 1) if m > 1 else 1.0)
            return xc / torch.sqrt(var + self.eps).reshape(shape)
        return (x - mean.reshape(shape)) / torch.sqrt(var + self.eps).reshape(shape)

    def _fused_ok(self, x) -> bool:
        """torch's batch_norm kernel computes these formulas for a float32 bottom with a channel axis and more
        than one value per channel (Caffe's m == 1 case, variance factor 1, and other dtypes keep the plain
        path)."""
        return (x.dim() > 1 and x.dtype == torch.float32 and self.mean.dtype == torch.float32
                and not (self.mean.requires_grad or self.variance.requires_grad or self.scale_factor.requires_grad)
                and (self.use_global_stats or x.numel() > x.shape[1]))

    def fused(self, x, weight=None, bias=None, defer=None):
        """The forward as torch's one-pass batch_norm kernel (``_fused_ok(x)`` must hold), with an affine
        ``weight`` and ``bias`` per channel when given (a Scale layer that follows: y * weight + bias).

        Batch statistics: torch's running-statistics update with momentum 1 into zeroed scratch buffers yields
        the batch mean and the m/(m-1)-corrected variance, which are added to Caffe's accumulators, now or, with
        ``defer`` (a ``netspec.net.fold.StatsBatch``), by ``defer.flush()`` together with every other BatchNorm
        of the pass."""
        if self.use_global_stats:
            sf = self.scale_factor
            inv = torch.where(sf == 0, torch.zeros_like(sf), 1 / sf)
            return torch.batch_norm(x, weight, bias, self.mean * inv, self.variance * inv, False, 0.0,
                                    self.eps, False)
        mean, var = self._scratch()
        y = torch.batch_norm(x, weight, bias, mean, var, True, 1.0, self.eps, False)
        if self.hold_state:
            return y
        if defer is not None:
            defer.add(self, mean, var)
            return y
        with torch.no_grad():
            self.scale_factor.mul_(self.maf).add_(1)
            self.mean.mul_(self.maf).add_(mean)
            self.variance.mul_(self.maf).add_(var)
        return y

    def _scratch(self):
        """Two zeroed per-channel vectors (one buffer, zeroed in one op; made again for another device): zeroed
        every call, since the kernel's momentum-1 update still multiplies the old value by 0 (an inf would
        give nan)."""
        buf = self.__dict__.get("_stats_buf")
        if buf is None or buf.device != self.mean.device:
            buf = torch.zeros(2, self.mean.numel(), dtype=torch.float32, device=self.mean.device)
            self.__dict__["_stats_buf"], self.__dict__["_stats_views"] = buf, (buf[0], buf[1])
        else:
            buf.zero_()
        return self.__dict__["_stats_views"]

    def extra_repr(self):
        stats = "global" if self.use_global_stats else "batch"
        return f"{self.mean.numel()}, stats={stats}, moving_average_fraction={self.maf}, eps={self.eps}"


@register("BatchNorm", reshape_like=True,
          pure=True,
          coord="identity",
          blobs=('mean', 'variance', 'scale_factor'),
          example=example_net("BatchNorm"))
def batch_norm(lp, bottom_shapes, ctx):
    """BatchNorm: batch_norm_param use_global_stats (default: phase == TEST), moving_average_fraction (.999),
    eps (1e-5). Channels = bottom axis 1. Rules in ``BatchNorm``; unlike torch's momentum, the accumulators
    are un-normalised sums corrected by the scale-factor blob.
    """
    p = lp.batch_norm_param
    for i, spec in enumerate(lp.param[:3]):
        if spec.lr_mult != 0:
            raise fail(lp, ctx, f"param {i} has lr_mult {spec.lr_mult}: cannot configure batch normalization "
                                "statistics as layer parameters (lr_mult must be 0)")
    shape = bottom_shapes[0]
    use_global = p.use_global_stats if p.HasField("use_global_stats") else ctx.phase == caffe_pb2.TEST
    return BatchNorm(shape[1] if len(shape) > 1 else 1, use_global, p.moving_average_fraction, p.eps)


class _MVNFunction(torch.autograd.Function):
    """(x - mean) / (std + eps) with Caffe's backward (g - mean(g) - y * mean(g * y)) / (std + eps)."""

    @staticmethod
    def forward(ctx, x, dims, eps):
        xc = x - x.mean(dims, keepdim=True)
        std = torch.sqrt((xc * xc).mean(dims, keepdim=True)) + eps
        y = xc / std
        ctx.dims = dims
        ctx.save_for_backward(y, std)
        return y

    @staticmethod
    def backward(ctx, g):
        y, std = ctx.saved_tensors
        dims = ctx.dims
        gx = g - g.mean(dims, keepdim=True) - y * (g * y).mean(dims, keepdim=True)
        return gx / std, None, None


class MVN(nn.Module):
    """Per item (across_channels) or per item and channel: y = x - mean, then / (sqrt(var) + eps) when
    normalize_variance. Note eps is added to the standard deviation, not to the variance."""

    def __init__(self, normalize_variance, across_channels, eps):
        super().__init__()
        self.normalize_variance, self.across_channels, self.eps = normalize_variance, across_channels, eps

    def forward(self, x):
        dims = tuple(range(1 if self.across_channels else 2, x.dim()))
        if not dims:  # one value per mean: Caffe's dim == 1
            dims = (x.dim(),)
            x = x.unsqueeze(-1)
            return self._run(x, dims).squeeze(-1)
        return self._run(x, dims)

    def _run(self, x, dims):
        if self.normalize_variance:
            return _MVNFunction.apply(x, dims, self.eps)
        return x - x.mean(dims, keepdim=True)

    def extra_repr(self):
        return f"normalize_variance={self.normalize_variance}, across_channels={self.across_channels}, eps={self.eps}"


class DeployMVN(nn.Module):
    """For export: MVN without the custom autograd Function."""

    def __init__(self, m):
        super().__init__()
        self.normalize_variance, self.across_channels = m.normalize_variance, m.across_channels
        # A 1-element tensor, not a Python float: the ONNX exporter's optimiser folds "+ 1e-9" away as a scalar,
        # and a constant input (variance 0) then gives 0/0.
        self.register_buffer("eps", torch.tensor([m.eps], dtype=torch.float32), persistent=False)

    def forward(self, x):
        dims = tuple(range(1 if self.across_channels else 2, x.dim()))
        if not dims:
            return self._run(x.unsqueeze(-1), (x.dim(),)).squeeze(-1)
        return self._run(x, dims)

    def _run(self, x, dims):
        xc = x - x.mean(dims, keepdim=True)
        if not self.normalize_variance:
            return xc
        return xc / (torch.sqrt((xc * xc).mean(dims, keepdim=True)) + self.eps)


@register("MVN", reshape_like=True,
          coord="identity",
          export=Export(deploy=lambda m, dynamic_hw: DeployMVN(m)),
          example=example_net("MVN"))
def mvn(lp, bottom_shapes, ctx):
    """MVN: mvn_param normalize_variance (true), across_channels (false), eps (1e-9).

    Means over H, W (and C when across_channels); y = (x - mean) / (sqrt(E[(x - mean)^2]) + eps).
    """
    p = lp.mvn_param
    if len(bottom_shapes[0]) < 1 + (not p.across_channels):
        raise fail(lp, ctx, f"bottom shape {tuple(bottom_shapes[0])} has no channel axis")
    return MVN(p.normalize_variance, p.across_channels, p.eps)
