"""``unet_idd``: U-Net (Ronneberger, Fischer, Brox 2015) with batch normalisation, for IDD's 26 level-3 classes.

Four down levels and four up levels around a bottleneck (widths 64, 128, 256, 512 | 1024). Every level has
two 3×3 convolutions, each Conv (pad 1, no bias, MSRA) → BatchNorm → Scale (bias) → ReLU, in place, as Caffe
BN nets write them; 2×2 max pooling goes down. Going up, a learned 2×2 stride-2 Deconvolution halves the
width, a Crop (offset from :func:`netspec.authoring.coord_map.crop`, always 0 here) trims it to the matching encoder
block -- Caffe's ceil pooling makes the upsampled blob one pixel larger on an odd side -- and a Concat
(encoder block first) feeds the level's two convolutions. A 1×1 convolution scores the classes, so the
score is H×W at any input size (odd sizes included) and the deploy net takes 1×3×720×1280.

Names: ``enc{l}_{i}`` (+ ``_bn``, ``_scale``, ``_relu``), ``pool{l}``, ``mid_{i}``, ``up{l}``, ``up{l}_crop``,
``concat{l}``, ``dec{l}_{i}``, ``score``, ``loss``.

Data: :class:`netspec.layers.seg_lmdb.SegDataLayer` on ``data/idd/{train,val}`` (pack them with
``python tools/build_seg_lmdb.py idd IDD_Segmentation data/idd/train [--split val]``). Training draws, per
image, a scale in [0.5, 1.5] and a rotation in ±10° (image bilinear with the mean as border, label nearest
with 255 as border, never interpolated), a random 512×512 crop and a horizontal flip; batches of 4.

Loss: SoftmaxWithLoss, ``ignore_label: 255``, normalised over valid pixels, with ``class_weight`` from
``data/idd/train/class_weights.txt`` (the packer's ``w_c = 1 - n_c / sum(n)`` over the training split) read
when the zoo is generated with ``python tools/make_zoo.py --class-weights-from-data unet_idd`` after packing,
and all 1 (the unweighted loss) otherwise: plain generation never reads local data.

Solver: SGD, poly (base_lr 0.01, power 0.9), momentum 0.9, weight decay 1e-4, 30,000 iterations -- the
DeepLabv3 schedule, so that both models train alike -- validating on IDD val's 981 images every 2,000.
"""
from typing import Optional

from ..coord_map import crop
from ...data.classes import IDD_CLASSES
from ..dsl import NetSpec, layers as L
from .common import CONV_PARAM, WEIGHT, batch_norm, max_pool, read_class_weights, scale_bias, seg_split_inputs, solver, weighted_softmax_loss

__all__ = ["unet", "unet_solver", "conv_bn_relu", "NUM_CLASSES", "INPUT_SHAPE"]

NUM_CLASSES = len(IDD_CLASSES)
WIDTHS = (64, 128, 256, 512)
BOTTLENECK = 1024
INPUT_SHAPE = (1, 3, 720, 1280)
TRAIN_AUGMENT = dict(batch_size=4, crop=512, mirror=True, rotate=10, scale_jitter=(0.5, 1.5), seed=1337)


def conv_bn_relu(n: NetSpec, bottom, name: str, nout: int):
    """``name``: 3×3 Conv (pad 1, no bias) → ``name_bn`` → ``name_scale`` → ``name_relu``, in place."""
    n[name] = L.Convolution(bottom, num_output=nout, kernel_size=3, pad=1, bias_term=False,
                            weight_filler=dict(type="msra"), param=[WEIGHT])
    n[f"{name}_bn"] = batch_norm(n[name])
    n[f"{name}_scale"] = scale_bias(n[f"{name}_bn"])
    n[f"{name}_relu"] = L.ReLU(n[f"{name}_scale"], in_place=True)
    return n[f"{name}_relu"]


def unet(split: str, *, num_classes: int = NUM_CLASSES, source: str = "data/idd",
         class_weights: Optional[str] = None):
    """The ``train``, ``val`` or ``deploy`` net; ``class_weights``: the weights file the loss takes."""
    n = NetSpec()
    seg_split_inputs(n, split, source, INPUT_SHAPE, TRAIN_AUGMENT)
    bottom, skips = n.data, []
    for level, width in enumerate(WIDTHS, start=1):
        for i in (1, 2):
            bottom = conv_bn_relu(n, bottom, f"enc{level}_{i}", width)
        skips.append(bottom)
        n[f"pool{level}"] = max_pool(bottom)
        bottom = n[f"pool{level}"]
    for i in (1, 2):
        bottom = conv_bn_relu(n, bottom, f"mid_{i}", BOTTLENECK)
    for level in range(len(WIDTHS), 0, -1):
        width, skip = WIDTHS[level - 1], skips[level - 1]
        n[f"up{level}"] = L.Deconvolution(bottom, convolution_param=dict(
            num_output=width, kernel_size=2, stride=2, weight_filler=dict(type="msra")), param=list(CONV_PARAM))
        n[f"up{level}_crop"] = crop(n[f"up{level}"], skip)
        n[f"concat{level}"] = L.Concat(skip, n[f"up{level}_crop"])
        bottom = n[f"concat{level}"]
        for i in (1, 2):
            bottom = conv_bn_relu(n, bottom, f"dec{level}_{i}", width)
    n.score = L.Convolution(bottom, num_output=num_classes, kernel_size=1, weight_filler=dict(type="msra"),
                            param=list(CONV_PARAM))
    if split != "deploy":
        n.loss = weighted_softmax_loss(n.score, n.label, read_class_weights(class_weights, num_classes))
    return n.to_proto()


def unet_solver(name: str = "unet_idd"):
    return solver(name, base_lr=0.01, lr_policy="poly", power=0.9, momentum=0.9, weight_decay=1e-4,
                  max_iter=30000, snapshot=2000, test_iter=981, test_interval=2000)

