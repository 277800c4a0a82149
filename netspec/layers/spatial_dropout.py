"""ENet's spatial dropout, a built-in stand-in for the Python layer its prototxts name
(``python_param { module: "spatial_dropout" layer: "SpatialDropoutLayer" param_str: "{'phase': ..., 'p': ...}" }``),
as TimoSaemann/caffe-enet python/spatial_dropout.py (``SpatialDropoutLayer.setup``, ``forward``, ``backward``).

The phase comes from ``param_str`` ('TRAIN' or anything else), not from the net. With q = 1 / (1 - p):
TRAIN keeps each whole channel plane of each item with probability 1 - p and multiplies the kept ones by q;
otherwise (the released deploy prototxts say 'TEST') y = q * x, as the fork does, and the released weights
expect. The backward applies the same factors. (The fork's TRAIN backward multiplies every item by the mask
drawn for the batch's last item; here each item gets its own mask's gradient.)
"""
import numpy as np
import torch

from ..errors import LayerError
from .python import BUILTIN, Layer, parse_param_str


class SpatialDropoutLayer(Layer):
    """pycaffe-style layer: bottom and top N x C x H x W."""

    def setup(self, bottom, top):
        if len(bottom) != 1 or len(top) != 1:
            raise LayerError(f"spatial dropout takes one bottom and one top, got {len(bottom)} and {len(top)}")
        param = parse_param_str(self.param_str)
        if not isinstance(param, dict) or "p" not in param or "phase" not in param:
            raise LayerError(f"param_str must be a dict with 'phase' and 'p', got {self.param_str!r}")
        self.train = str(param["phase"]) == "TRAIN"
        self.p = float(param["p"])
        if not 0 < self.p < 1:
            raise LayerError(f"p must be between 0 and 1, got {self.p}")
        self.scale = np.float32(1.0 / (1.0 - self.p))
        self.factor = None

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.train:
            keep = (torch.rand(x.shape[:2]) >= self.p).numpy().astype(np.float32)
            self.factor = (keep * self.scale).reshape(x.shape[:2] + (1,) * (x.ndim - 2))
        else:
            self.factor = self.scale
        top[0].data[...] = x * self.factor

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.factor


BUILTIN.setdefault("spatial_dropout.SpatialDropoutLayer", SpatialDropoutLayer)
