"""netspec: Caffe's prototxt world on PyTorch.

``import netspec as caffe`` gives the pycaffe surface: ``caffe.Net``, ``caffe.TRAIN``/``caffe.TEST``,
``caffe.Layer``, ``caffe.set_mode_cpu()``, ``caffe.get_solver``...
"""
from .errors import NetspecError  # noqa: F401
from .proto import caffe_pb2  # noqa: F401

from .proto.caffe_pb2 import TEST, TRAIN  # noqa: E402,F401

from .layers.python import Layer  # noqa: E402,F401
from .dsl import NetSpec, layers, params  # noqa: E402,F401
from .net import Net  # noqa: E402,F401
from .registry import LAYERS, register  # noqa: E402,F401
from .solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,  # noqa: E402,F401
                     RMSPropSolver, SGDSolver, Solver, get_solver)
from .runtime import set_device, set_mode_cpu, set_mode_gpu, set_random_seed  # noqa: E402,F401

__version__ = "0.1.0"
