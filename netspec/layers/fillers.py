"""Caffe's weight fillers (FillerParameter), drawing from torch's global RNG.

Defaults come from the message: an absent ``weight_filler`` is ``constant`` 0, which FCN nets rely on.
Fan-in/fan-out are computed from the *Caffe blob shape* as filler.hpp does: fan_in = count / shape[0],
fan_out = count / shape[1] (so a Deconvolution blob (C_in, C_out, k, k) has fan_in = C_out*k*k).
"""
import math

import torch

from ..errors import LayerError
from ..proto import caffe_pb2

VarianceNorm = caffe_pb2.FillerParameter


def _fan(shape, norm):
    count = math.prod(shape)
    fan_in = count // shape[0] if shape else 1
    fan_out = count // shape[1] if len(shape) > 1 else count
    if norm == VarianceNorm.FAN_OUT:
        return fan_out
    if norm == VarianceNorm.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def _bilinear(shape):
    # Caffe's BilinearFiller: the same 1-D profile in every (i, j) slice (right for depthwise deconvs only).
    if len(shape) != 4 or shape[2] != shape[3]:
        raise LayerError(f"bilinear filler needs a 4-D blob with square kernels, got {tuple(shape)}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    r = torch.arange(k, dtype=torch.float64)
    prof = 1 - torch.abs(r / f - c)
    return (prof[:, None] * prof[None, :]).to(torch.float32).expand(*shape).clone()


def fill_(tensor: torch.Tensor, filler: "caffe_pb2.FillerParameter") -> torch.Tensor:
    """Fill ``tensor`` in place as Caffe's filler of the given parameters would."""
    shape = tuple(tensor.shape)
    kind = filler.type
    with torch.no_grad():
        if kind == "constant":
            tensor.fill_(filler.value)
        elif kind == "uniform":
            tensor.uniform_(filler.min, filler.max)
        elif kind == "gaussian":
            tensor.normal_(filler.mean, filler.std)
            if filler.sparse >= 0:
                # Caffe keeps each weight with probability sparse / num_outputs.
                if tensor.dim() < 2:
                    raise LayerError("sparse gaussian filler needs a blob with at least 2 axes")
                p = min(1.0, filler.sparse / shape[0])
                tensor.mul_(torch.bernoulli(torch.full(shape, p)))
        elif kind == "positive_unitball":
            tensor.uniform_(0, 1)
            flat = tensor.view(shape[0], -1) if shape else tensor.view(1, -1)
            flat.div_(flat.sum(dim=1, keepdim=True))
        elif kind == "xavier":
            scale = math.sqrt(3.0 / _fan(shape, filler.variance_norm))
            tensor.uniform_(-scale, scale)
        elif kind == "msra":
            std = math.sqrt(2.0 / _fan(shape, filler.variance_norm))
            tensor.normal_(0.0, std)
        elif kind == "bilinear":
            tensor.copy_(_bilinear(shape))
        else:
            raise LayerError(f"Unknown filler type '{kind}'. Known: constant, uniform, gaussian, "
                             "positive_unitball, xavier, msra, bilinear")
    return tensor
