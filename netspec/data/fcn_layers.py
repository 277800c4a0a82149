"""The FCN releases' data layers are in :mod:`netspec.layers.fcn_data` (data layers live with the layers) and
their file readers in :mod:`netspec.data.fcn_files`; this name stays importable for code written against it."""
from ..layers.fcn_data import *  # noqa: F401,F403
from ..layers.fcn_data import VOCSegDataLayer, register  # noqa: F401
from .fcn_files import *  # noqa: F401,F403
from .fcn_files import (CONTEXT_MEAN, NYUD_COLOR_MEAN, NYUD_HHA_MEAN, SIFTFLOW_MEAN, SIFTFLOW_SUBDIR,  # noqa: F401
                        VOC_MEAN, ContextLabels, load_mat, read_bgr, read_index_png, read_split, voc_label)
