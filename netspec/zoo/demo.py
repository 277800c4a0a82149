"""``demo``: a small FCN that trains on CPU in minutes on 64×64 synthetic shapes (4 classes).

Trunk at strides 1, 2, 4 (3×3 convolutions, 16/32/64 channels, MSRA init), a stride-4 score,
one FCN-16s-style skip from pool1, and two frozen bilinear deconvolutions (``group`` = classes,
where Caffe's ``bilinear`` filler is exact). Its two Crop layers show both directions of
:func:`netspec.coord_map.crop`: the upsampled coarse score is cropped to the pool1 score (it is
the larger one here, as there is no 100-pixel input padding) and the final score to the input.
The loss is normalised over valid pixels, so ordinary learning rates (Adam 1e-3) apply.
"""
from ..coord_map import crop
from ..dsl import NetSpec, layers as L, params as P
from .common import CONV_PARAM, FROZEN, deploy_input, python_data, softmax_loss

NUM_CLASSES = 4
INPUT_SHAPE = (1, 3, 64, 64)
DATA_MODULE, DATA_LAYER = "netspec.data.seg", "SegDataLayer"


def _conv(bottom, nout, ks=3, pad=1):
    return L.Convolution(bottom, num_output=nout, kernel_size=ks, pad=pad, param=list(CONV_PARAM),
                         weight_filler=dict(type="msra"), bias_filler=dict(type="constant"))


def _upsample(bottom, ks, stride):
    return L.Deconvolution(bottom, convolution_param=dict(
        num_output=NUM_CLASSES, kernel_size=ks, stride=stride, group=NUM_CLASSES,
        bias_term=False, weight_filler=dict(type="bilinear")), param=list(FROZEN))


def demo(split: str):
    """``split`` is ``train``, ``val`` or ``deploy``."""
    n = NetSpec()
    if split == "deploy":
        n.data = deploy_input(INPUT_SHAPE)
    else:
        n.data, n.label = python_data(DATA_MODULE, DATA_LAYER,
                                      f"{{'source': 'data/demo/{split}', 'seed': 1}}")
    bottom = n.data
    for stage, width, count in ((1, 16, 2), (2, 32, 2), (3, 64, 1)):
        for i in range(1, count + 1):
            n[f"conv{stage}_{i}"] = _conv(bottom, width)
            n[f"relu{stage}_{i}"] = L.ReLU(n[f"conv{stage}_{i}"], in_place=True)
            bottom = n[f"relu{stage}_{i}"]
        if stage < 3:
            n[f"pool{stage}"] = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2, stride=2)
            bottom = n[f"pool{stage}"]
    n.score_fr = _conv(bottom, NUM_CLASSES, ks=1, pad=0)
    n.upscore2 = _upsample(n.score_fr, 4, 2)
    n.score_pool1 = _conv(n.pool1, NUM_CLASSES, ks=1, pad=0)
    n.upscore2c = crop(n.upscore2, n.score_pool1)
    n.fuse_pool1 = L.Eltwise(n.upscore2c, n.score_pool1, operation=P.Eltwise.SUM)
    n.upscore_pool1 = _upsample(n.fuse_pool1, 4, 2)
    n.score = crop(n.upscore_pool1, n.data)
    if split != "deploy":
        n.loss = softmax_loss(n.score, n.label, normalize=None, normalization="VALID")
    return n.to_proto()
