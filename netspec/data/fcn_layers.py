"""The FCN releases' data layers moved to :mod:`netspec.layers.fcn_data` (data layers live with the layers); this
name stays importable for code written against it."""
from ..layers.fcn_data import *  # noqa: F401,F403
from ..layers.fcn_data import (CONTEXT_MEAN, NYUD_COLOR_MEAN, NYUD_HHA_MEAN, SIFTFLOW_MEAN,  # noqa: F401
                               SIFTFLOW_SUBDIR, VOC_MEAN, ContextLabels, VOCSegDataLayer, load_mat, read_bgr,
                               read_index_png, read_split, register, voc_label)
