"""The ``Python`` layer: a pycaffe ``caffe.Layer`` subclass, run with numpy on CPU and differentiable
through its own ``backward``.

Importing the module the prototxt names executes code, as in Caffe. Set ``NETSPEC_FORBID_PYTHON_LAYERS=1``
(or ``netspec.layers.python.FORBID = True``) to refuse Python layers in nets you do not trust.
"""
import ast
import importlib
import os

import numpy as np
import torch
from torch import nn

from ..net.blob import Blob
from ..errors import LayerError, NetspecError
from ..registry import Export, register

FORBID = os.environ.get("NETSPEC_FORBID_PYTHON_LAYERS", "") not in ("", "0")

# Built-in replacements for upstream Python layers, keyed by "module.Layer" (filled by netspec.data).
BUILTIN = {}


class Layer:
    """Base class of Python layers, with pycaffe's surface: setup/reshape/forward/backward over Blobs."""

    def __init__(self, param=None, phase=None):
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = phase
        self.layer_param = param
        self.blobs = []

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        raise NotImplementedError

    def backward(self, top, propagate_down, bottom):
        pass


def parse_param_str(param_str: str):
    """A Python layer's param_str as data (ast.literal_eval, never eval); '' gives {}."""
    if not param_str.strip():
        return {}
    try:
        return ast.literal_eval(param_str)
    except (ValueError, SyntaxError, TypeError) as e:  # TypeError: an unhashable dict key / set item
        raise LayerError(f"param_str {_excerpt(param_str)} is not a Python literal: {e}") from None
    except (RecursionError, MemoryError):  # "-" * 10**5 + "1", "1" + "+1" * 10**5: nested too deeply
        raise LayerError(f"param_str {_excerpt(param_str)} is nested too deeply to read as a Python "
                         "literal") from None


def _excerpt(text: str, limit: int = 200) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


class _PyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module, *xs):
        layer = module.layer
        bottom = [Blob(data=x.detach().to("cpu", torch.float32).clone()) for x in xs]
        top = module.top_blobs
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        ctx.module, ctx.bottom = module, bottom
        ctx.devices = [x.device for x in xs]
        dev = xs[0].device if xs else torch.device("cpu")
        return tuple(t._data.clone().to(dev) for t in top)

    @staticmethod
    def backward(ctx, *grads):
        module, bottom = ctx.module, ctx.bottom
        top = [Blob(data=t._data.clone()) for t in module.top_blobs]
        for t, g in zip(top, grads):
            t.diff[...] = g.detach().to("cpu").numpy() if g is not None else 0
        prop = [ctx.needs_input_grad[i + 1] for i in range(len(bottom))]
        module.layer.backward(top, prop, bottom)
        out = [torch.from_numpy(b.diff.copy()).to(d) if p else None
               for b, p, d in zip(bottom, prop, ctx.devices)]
        return (None, *out)


class PythonModule(nn.Module):
    def __init__(self, layer, n_tops, ident: str = ""):
        super().__init__()
        self.layer = layer
        self.top_blobs = [Blob() for _ in range(n_tops)]
        self._setup_done = False
        self.ident = ident

    def _setup(self, bottom_shapes):
        bottom = [Blob(s) for s in bottom_shapes]
        try:
            if not self._setup_done:
                self.layer.setup(bottom, self.top_blobs)
                self._setup_done = True
            self.layer.reshape(bottom, self.top_blobs)
        except NetspecError as e:  # e.g. a bad param_str: say which layer
            if self.ident and not str(e).startswith(self.ident):
                raise type(e)(f"{self.ident}: {e}") from e
            raise

    def top_shapes(self, bottom_shapes):
        self._setup(bottom_shapes)
        return [t.shape for t in self.top_blobs]

    def forward(self, *xs):
        out = _PyFunction.apply(self, *xs)
        return out if len(out) != 1 else out[0]


@register("Python", bottoms=(0, None), tops=(0, None),
          detail=lambda lp: f"{lp.python_param.module}.{lp.python_param.layer}",
          export=Export(refuse='runs arbitrary Python code, which has no ONNX equivalent'),
          colour="#DDDDDD",
          example="")
def python_layer(lp, bottom_shapes, ctx):
    """python_param {module, layer, param_str}: the class ``module.layer`` (a ``netspec.Layer``)."""
    p = lp.python_param
    key = f"{p.module}.{p.layer}"
    cls = BUILTIN.get(key)  # built-in Python layers: netspec.layers.fcn_data, seg_lmdb, proposal, spatial_dropout
    own = p.module == "netspec" or p.module.startswith("netspec.")  # netspec's own layers (SegDataLayer)
    if cls is None:
        if FORBID and not own:
            raise LayerError(f"Python layers are forbidden (NETSPEC_FORBID_PYTHON_LAYERS); this net asks for "
                             f"'{key}' (netspec's own layers, netspec.*, stay allowed)")
        try:
            mod = importlib.import_module(p.module)
        except ImportError as e:
            raise LayerError(f"cannot import module '{p.module}' for Python layer class '{p.layer}': {e}. "
                             "Put the module on PYTHONPATH (as with Caffe), or run from its directory") from e
        cls = getattr(mod, p.layer, None)
        if cls is None:
            raise LayerError(f"module '{p.module}' has no class '{p.layer}'")
        if FORBID and not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise LayerError(f"'{key}' is not a netspec Layer class; Python layers are forbidden "
                             "(NETSPEC_FORBID_PYTHON_LAYERS)")
    try:
        layer = cls(lp)
    except TypeError:
        layer = cls()
    layer.param_str = p.param_str
    layer.param_str_ = p.param_str  # the older pycaffe name (py-faster-rcnn's layers read it)
    layer.phase = ctx.phase
    if not hasattr(layer, "blobs"):
        layer.blobs = []
    return PythonModule(layer, len(lp.top), f"{ctx.where}layer '{lp.name}' (Python)")
