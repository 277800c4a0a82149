"""netspec: Caffe's prototxt world on PyTorch.

``import netspec as caffe`` gives the pycaffe surface: ``caffe.Net``, ``caffe.TRAIN``/``caffe.TEST``,
``caffe.Layer``, ``caffe.set_mode_cpu()``, ``caffe.get_solver``, and the NetSpec DSL (``caffe.layers``,
``caffe.params``, ``caffe.NetSpec``)...

The names load on first use (PEP 562), so that importing a submodule (a tool's ``--help``) does not import torch.
"""
import importlib

from .errors import NetspecError  # noqa: F401
from .proto.caffe_pb2 import TEST, TRAIN  # noqa: F401

__version__ = "0.1.0"

#: name -> (submodule, attribute); ``layers`` is the netspec.layers package, which also serves the DSL's
#: ``L.Convolution(...)`` factory (see netspec/layers/__init__.py).
_LAZY = {
    "caffe_pb2": ("proto", "caffe_pb2"), "Layer": ("layers.python", "Layer"), "NetSpec": ("dsl", "NetSpec"),
    "params": ("dsl", "params"), "Net": ("net", "Net"), "LAYERS": ("registry", "LAYERS"),
    "register": ("registry", "register"),
    **{n: ("solver", n) for n in ("AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "NesterovSolver",
                                  "RMSPropSolver", "SGDSolver", "Solver", "get_solver")},
    **{n: ("runtime", n) for n in ("set_device", "set_mode_cpu", "set_mode_gpu", "set_random_seed")},
}
__all__ = ["NetspecError", "TEST", "TRAIN", "layers", *_LAZY]


def __getattr__(name):
    if name == "layers":
        return importlib.import_module(".layers", __name__)
    if name not in _LAZY:
        raise AttributeError(f"module 'netspec' has no attribute '{name}'")
    module, attr = _LAZY[name]
    if name == "LAYERS":
        importlib.import_module(".layers", __name__)  # the registry holds the builders once they are imported
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
