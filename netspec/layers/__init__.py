"""Importing this package registers every layer builder (one module per layer family)."""
from . import python  # noqa: F401
from . import shape, eltwise, loss, accuracy, recurrent  # noqa: F401
from . import conv, pooling, inner_product, neuron, normalization, interp  # noqa: F401
from . import data, fcn_data, seg_lmdb  # noqa: F401  (seg_lmdb: netspec's SegDataLayer, a built-in Python layer)
from . import bn  # noqa: F401  (PSPNet / SegNet / ENet BN)
from . import roi_pooling, proposal, smooth_l1_loss, axpy, shuffle_channel  # noqa: F401  (Faster R-CNN, SENet, ShuffleNet)
from . import ssd, mobilenet  # noqa: F401  (SSD, MobileNet-SSD / MobileNet forks)
from . import upsample  # noqa: F401  (SegNet / ENet Upsample)
from . import seg_data, seg_accuracy, mat_write  # noqa: F401  (DeepLab v1/v2 ImageSegData, SegAccuracy, MatWrite)
from . import dense_data  # noqa: F401  (SegNet / ENet DenseImageData)
from . import spatial_dropout  # noqa: F401  (ENet's spatial_dropout Python layer, built in)
from . import annotated_data  # noqa: F401  (SSD's AnnotatedData)
from . import multibox_loss  # noqa: F401  (SSD's MultiBoxLoss, DetectionEvaluate)


def __getattr__(name):
    """``netspec.layers.Convolution(...)``: the NetSpec DSL's layer factory (pycaffe's ``caffe.layers``) for any
    name that is not a layer-family module here."""
    if name.startswith("__"):
        raise AttributeError(name)
    from ..authoring.dsl import layers as dsl_layers
    return getattr(dsl_layers, name)
