"""A built net: ``caffe_net.CaffeNet`` (the nn.Module that runs the layers in order over a dict of blobs), the
pycaffe surface on top of it (``pycaffe.Net``, ``blob.Blob``), fillers, weight copying and the run-time settings.

``from netspec.net import Net, TEST`` keeps working: names not defined here come from ``pycaffe`` on first use.
"""


def __getattr__(name):
    import sys
    from .pycaffe import Net  # noqa: F401  ("from . import pycaffe" would ask this function for the module first)
    try:
        return getattr(sys.modules[f"{__name__}.pycaffe"], name)
    except AttributeError:
        raise AttributeError(f"module 'netspec.net' has no attribute '{name}'") from None
