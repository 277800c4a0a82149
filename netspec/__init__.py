"""netspec: Caffe's prototxt world on PyTorch.

``import netspec as caffe`` gives the pycaffe surface: ``caffe.Net``, ``caffe.TRAIN``/``caffe.TEST``,
``caffe.Layer``, ``caffe.set_mode_cpu()``, ``caffe.get_solver``, and the NetSpec DSL (``caffe.layers``,
``caffe.params``, ``caffe.NetSpec``)...

The names load on first use (PEP 562), so that importing a submodule (a tool's ``--help``) does not import torch.
"""
import sys

from . import _moved  # noqa: F401  (the modules' pre-0.2 homes, netspec.prototxt & co., still import)
from .errors import NetspecError  # noqa: F401
from .proto.caffe_pb2 import TEST, TRAIN  # noqa: F401

__version__ = "0.1.0"

_SOLVERS = ("AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "NesterovSolver", "RMSPropSolver", "SGDSolver",
            "Solver", "get_solver")
_RUNTIME = ("set_device", "set_mode_cpu", "set_mode_gpu", "set_random_seed")
__all__ = ["NetspecError", "TEST", "TRAIN", "caffe_pb2", "layers", "Layer", "NetSpec", "params", "Net", "LAYERS",
           "register", *_SOLVERS, *_RUNTIME]


def __getattr__(name):
    # Only "from .module import name" here: "from . import module" would ask this function for the module first.
    # ``layers`` is the netspec.layers package, which also serves the DSL's ``L.Convolution(...)`` factory.
    if name == "layers":
        from .layers.python import Layer  # noqa: F401  (imports the package, every layer registered)
        value = sys.modules[f"{__name__}.layers"]
    elif name == "caffe_pb2":
        from .proto import caffe_pb2 as value
    elif name == "Layer":
        from .layers.python import Layer as value
    elif name == "NetSpec":
        from .authoring.dsl import NetSpec as value
    elif name == "params":
        from .authoring.dsl import params as value
    elif name == "Net":
        from .net.pycaffe import Net as value
    elif name in ("LAYERS", "register"):
        from .layers.python import Layer  # noqa: F401  (the registry holds the builders once they are imported)
        from .registry import LAYERS, register
        value = LAYERS if name == "LAYERS" else register
    elif name in _SOLVERS:
        from .solver.solvers import Solver  # noqa: F401
        value = getattr(sys.modules[f"{__name__}.solver.solvers"], name)
    elif name in _RUNTIME:
        from .net.runtime import set_device  # noqa: F401
        value = getattr(sys.modules[f"{__name__}.net.runtime"], name)
    else:
        raise AttributeError(f"module 'netspec' has no attribute '{name}'")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
