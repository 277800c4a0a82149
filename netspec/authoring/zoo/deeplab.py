"""DeepLabv3 (Chen, Papandreou, Schroff, Adam 2017) on the ResNet-101 of Kaiming He's Caffe release, for IDD.

**Trunk.** Layer for layer the ``ResNet-101-deploy.prototxt`` of github.com/KaimingHe/deep-residual-networks,
up to ``res5c``: ``conv1`` (7×7/2, no bias) → ``bn_conv1`` → ``scale_conv1`` → ``conv1_relu`` → ``pool1``
(3×3/2 max), then bottleneck blocks ``res{s}{b}`` -- stages 2 (``a b c``), 3 (``a b1 b2 b3``), 4 (``a b1 …
b22``), 5 (``a b c``) -- each ``res{s}{b}_branch2a`` (1×1) / ``2b`` (3×3) / ``2c`` (1×1) with ``bn{s}{b}_*``,
``scale{s}{b}_*`` and ``res{s}{b}_branch2{a,b}_relu``, a projection ``res{s}a_branch1`` in the first block of a
stage, the sum ``res{s}{b}`` (Eltwise) and ``res{s}{b}_relu``; every convolution bias-free, every BatchNorm
``use_global_stats: true``, every Scale ``bias_term: true``, a stage's stride on its first block's
``branch1`` and ``branch2a`` (1×1), as in that release. So the release's ``ResNet-101-model.caffemodel``
copies into it name for name (its ``fc1000`` is ignored, as Caffe does).
:func:`resnet101_deploy` writes the release's deploy net itself (with ``pool5``, ``fc1000``, ``prob``).

**Output stride.** 16 (the default): ``res5`` keeps stride 1 (its ``branch1``/``branch2a`` stride 2 → 1) and
its 3×3 convolutions get dilation 2 (pad 2). 8: ``res4`` likewise with dilation 2 and ``res5`` with dilation
4. Neither changes a parameter's shape, so the release weights still fit. Multi-grid is not used.

**Frozen BatchNorm.** The trunk's BatchNorm layers keep the release's statistics (``use_global_stats: true``)
and, as Caffe-era DeepLab did, they and the Scale layers after them never learn (``lr_mult: 0``,
``decay_mult: 0``). The trunk's convolutions learn (``lr_mult: 1``) in ``deeplabv3_resnet101_idd``;
``deeplabv3_resnet101_idd_head`` freezes them as well (``lr_mult: 0``, ``decay_mult: 0``), so only the head
learns: transfer learning from the ImageNet trunk in one command::

    python tools/train.py --solver solvers/deeplabv3_resnet101_idd_head.prototxt \\
        --weights data/models/ResNet-101-model.caffemodel

(the trunk's convolutions have no filler, like the release: without ``--weights`` they are zero and the
trainer says so).

**Head (ASPP with image-level features).** On ``res5c``: ``aspp_b0`` (1×1), ``aspp_b1..b3`` (3×3, dilation 6,
12, 18 at output stride 16; 12, 24, 36 at 8), and ``aspp_pool`` (global average pooling) → ``aspp_b4`` (1×1)
→ ``aspp_b4_up`` (``Interp`` back to ``res5c``'s size); 256 channels each, every convolution bias-free,
MSRA-initialised and followed by ``bn_<name>``, ``scale_<name>``, ``<name>_relu`` (batch statistics in TRAIN).
``aspp_concat`` → ``aspp_proj`` (1×1, 256, BN/Scale/ReLU) → ``score_fr`` (1×1 classifier, 26 classes) →
``score``: ``Interp`` (bilinear, DeepLab's align-corners rule) to the input's H×W. The image-level branch
normalises over the batch at 1×1, so train with batches of 2 or more (the zoo's: 4).

**Data, loss, solver.** As ``unet_idd`` (see :mod:`netspec.authoring.zoo.unet`): SegDataLayer on ``data/idd/{train,val}``,
flips, ±10° rotations (labels nearest, 255 in the corners), scales in [0.5, 2.0] as the paper, 513×513
crops, batches of 4; SoftmaxWithLoss ignoring 255, normalised over valid pixels, ``class_weight`` from
``data/idd/train/class_weights.txt`` (read by ``make_zoo.py --class-weights-from-data``; all 1 otherwise). The image mean is
SegDataLayer's default, FCN's BGR (104.0, 116.7, 122.7), close to the release's mean image. Solver: SGD,
``poly`` learning rate (base_lr 0.01, power 0.9), momentum 0.9, weight decay 1e-4, ``iter_size`` 2 (8 images
per update), 30,000 iterations as the paper's output-stride-16 schedule; IDD val (981 images) every 2,000.
"""
from typing import Optional, Sequence

from ...data.classes import IDD_CLASSES
from ..dsl import NetSpec, layers as L, params as P
from .common import BN_PARAM, CONV_PARAM, FIXED, WEIGHT, batch_norm, deploy_input, read_class_weights, scale_bias, seg_split_inputs, solver, weighted_softmax_loss

__all__ = ["deeplabv3", "deeplab_solver", "resnet101", "resnet101_deploy", "RESNET101_STAGES", "block_names",
           "NUM_CLASSES", "INPUT_SHAPE", "deeplabv2_vgg16", "deeplabv2_solver"]

NUM_CLASSES = len(IDD_CLASSES)
INPUT_SHAPE = (1, 3, 720, 1280)
#: (stage, blocks, bottleneck width, output width) of ResNet-101.
RESNET101_STAGES = ((2, 3, 64, 256), (3, 4, 128, 512), (4, 23, 256, 1024), (5, 3, 512, 2048))
#: Per output stride: (stride, dilation) of stages 2..5.
_STRIDES = {32: ((1, 1), (2, 1), (2, 1), (2, 1)),
            16: ((1, 1), (2, 1), (2, 1), (1, 2)),
            8: ((1, 1), (2, 1), (1, 2), (1, 4))}
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
ASPP_WIDTH = 256
TRAIN_AUGMENT = dict(batch_size=4, crop=513, mirror=True, rotate=10, scale_jitter=(0.5, 2.0), seed=1337)


def block_names(stage: int, blocks: int) -> Sequence[str]:
    """The release's block suffixes: ``a b c`` for stages 2 and 5, ``a b1 b2 …`` for stages 3 and 4."""
    if stage in (2, 5):
        return "abcdefghijklmnopqrstuvwxyz"[:blocks]
    return ["a"] + [f"b{i}" for i in range(1, blocks)]


def _param(spec):
    return {} if spec is None else dict(param=list(spec))


def _conv_bn(n: NetSpec, bottom, conv: str, bn: str, scale: str, nout: int, ks: int, stride: int, pad: int,
             dilation: int, conv_param, frozen_bn: bool):
    """``conv`` (bias-free) → ``bn`` → ``scale``, in place; returns the Scale's top."""
    cp = dict(num_output=nout, kernel_size=ks, pad=pad, stride=stride, bias_term=False)
    if dilation > 1:
        cp["dilation"] = dilation
    n[conv] = L.Convolution(bottom, convolution_param=cp, **_param(conv_param))
    n[bn] = L.BatchNorm(n[conv], in_place=True, batch_norm_param=dict(use_global_stats=True),
                        **_param(BN_PARAM if frozen_bn else None))
    n[scale] = L.Scale(n[bn], in_place=True, scale_param=dict(bias_term=True),
                       **_param((FIXED, FIXED) if frozen_bn else None))
    return n[scale]


def resnet101(n: NetSpec, data, *, output_stride: int = 32, conv_param=None, frozen_bn: bool = False):
    """The release's ResNet-101 trunk, ``conv1`` … ``res5c_relu``, into ``n``; returns ``res5c``.

    ``conv_param``: the convolutions' ``param`` specs (``None``: none, as the release); ``frozen_bn`` gives the
    BatchNorm and Scale layers ``lr_mult: 0`` / ``decay_mult: 0``."""
    if output_stride not in _STRIDES:
        raise ValueError(f"output_stride must be one of {sorted(_STRIDES)}, not {output_stride}")
    top = _conv_bn(n, data, "conv1", "bn_conv1", "scale_conv1", 64, 7, 2, 3, 1, conv_param, frozen_bn)
    n.conv1_relu = L.ReLU(top, in_place=True)
    n.pool1 = L.Pooling(n.conv1_relu, kernel_size=3, stride=2, pool=P.Pooling.MAX)
    bottom = n.pool1
    for (stage, blocks, width, out), (stride, dilation) in zip(RESNET101_STAGES, _STRIDES[output_stride]):
        for k, b in enumerate(block_names(stage, blocks)):
            s, name = (stride if k == 0 else 1), f"{stage}{b}"
            shortcut = bottom
            if k == 0:
                shortcut = _conv_bn(n, bottom, f"res{name}_branch1", f"bn{name}_branch1", f"scale{name}_branch1",
                                    out, 1, s, 0, 1, conv_param, frozen_bn)
            top = bottom
            for branch, nout, ks, bs, pad, dil in (("2a", width, 1, s, 0, 1), ("2b", width, 3, 1, dilation, dilation),
                                                   ("2c", out, 1, 1, 0, 1)):
                top = _conv_bn(n, top, f"res{name}_branch{branch}", f"bn{name}_branch{branch}",
                               f"scale{name}_branch{branch}", nout, ks, bs, pad, dil, conv_param, frozen_bn)
                if branch != "2c":
                    n[f"res{name}_branch{branch}_relu"] = L.ReLU(top, in_place=True)
                    top = n[f"res{name}_branch{branch}_relu"]
            n[f"res{name}"] = L.Eltwise(shortcut, top)
            n[f"res{name}_relu"] = L.ReLU(n[f"res{name}"], in_place=True)
            bottom = n[f"res{name}_relu"]
    return bottom


def resnet101_deploy(input_shape=(1, 3, 224, 224)):
    """The release's ``ResNet-101-deploy.prototxt``: name ``ResNet-101``, the legacy ``input: "data"`` with its
    ``input_dim`` lines, the trunk, ``pool5`` (7×7 average), ``fc1000``, ``prob``."""
    n = NetSpec()
    n.data = L.Input(input_param=dict(shape=dict(dim=list(input_shape))))
    res5c = resnet101(n, n.data)
    n.pool5 = L.Pooling(res5c, kernel_size=7, stride=1, pool=P.Pooling.AVE)
    n.fc1000 = L.InnerProduct(n.pool5, num_output=1000)
    n.prob = L.Softmax(n.fc1000)
    net = n.to_proto()
    del net.layer[0]  # the release declares its input with the legacy net-level fields
    net.name = "ResNet-101"
    net.input.append("data")
    net.input_dim.extend(input_shape)
    return net


def _head_conv(n: NetSpec, bottom, name: str, ks: int = 1, dilation: int = 1):
    """``name`` (bias-free, MSRA) → ``bn_name`` → ``scale_name`` → ``name_relu``, in place."""
    cp = dict(num_output=ASPP_WIDTH, kernel_size=ks, bias_term=False, weight_filler=dict(type="msra"))
    if ks > 1:
        cp.update(pad=dilation, dilation=dilation)
    n[name] = L.Convolution(bottom, convolution_param=cp, param=[WEIGHT])
    n[f"bn_{name}"] = batch_norm(n[name])
    n[f"scale_{name}"] = scale_bias(n[f"bn_{name}"])
    n[f"{name}_relu"] = L.ReLU(n[f"scale_{name}"], in_place=True)
    return n[f"{name}_relu"]


def deeplabv3(split: str, *, train_trunk: bool = True, output_stride: int = 16, num_classes: int = NUM_CLASSES,
              source: str = "data/idd", class_weights: Optional[str] = None):
    """The ``train``, ``val`` or ``deploy`` net. ``train_trunk=False`` freezes the trunk's convolutions too
    (``lr_mult: 0``, ``decay_mult: 0``); ``class_weights``: the weights file the loss takes."""
    n = NetSpec()
    seg_split_inputs(n, split, source, INPUT_SHAPE, TRAIN_AUGMENT)
    res5c = resnet101(n, n.data, output_stride=output_stride, conv_param=(WEIGHT if train_trunk else FIXED,),
                      frozen_bn=True)
    branches = [_head_conv(n, res5c, "aspp_b0")]
    for i, rate in enumerate(ASPP_RATES[output_stride], start=1):
        branches.append(_head_conv(n, res5c, f"aspp_b{i}", ks=3, dilation=rate))
    n.aspp_pool = L.Pooling(res5c, pool=P.Pooling.AVE, global_pooling=True)
    pooled = _head_conv(n, n.aspp_pool, "aspp_b4")
    n.aspp_b4_up = L.Interp(pooled, res5c)  # to res5c's H x W
    n.aspp_concat = L.Concat(*branches, n.aspp_b4_up)
    proj = _head_conv(n, n.aspp_concat, "aspp_proj")
    n.score_fr = L.Convolution(proj, num_output=num_classes, kernel_size=1,
                               weight_filler=dict(type="gaussian", std=0.01), param=list(CONV_PARAM))
    n.score = L.Interp(n.score_fr, n.data)  # to the input's H x W
    if split != "deploy":
        n.loss = weighted_softmax_loss(n.score, n.label, read_class_weights(class_weights, num_classes))
    return n.to_proto()


def deeplab_solver(name: str):
    return solver(name, base_lr=0.01, lr_policy="poly", power=0.9, momentum=0.9, weight_decay=1e-4,
                  iter_size=2, max_iter=30000, snapshot=2000, test_iter=981, test_interval=2000)


# -- DeepLab v2 ASPP VGG16 (deeplab-public-ver2's released exper/voc12/config/vgg16) ----------------------------
DEEPLABV2_MEAN = (104.008, 116.669, 122.675)
#: The ASPP branches' dilations (the release's "hole = 6 ... 24").
DEEPLABV2_RATES = (6, 12, 18, 24)
#: Where the release's data live here: VOC2012 with DeepLab's SegmentationClassAug label PNGs, and the
#: release's list files (exper/voc12/list: "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png" lines).
DEEPLABV2_VOC_ROOT = "data/pascal/VOC2012"
DEEPLABV2_LISTS = "data/pascal/deeplab_list"


def _v2_conv(bottom, nout, ks, pad=0, dilation=1, param=CONV_PARAM, **fields):
    cp = dict(num_output=nout, kernel_size=ks, **fields)
    if pad:
        cp["pad"] = pad
    if dilation > 1:
        cp["dilation"] = dilation
    return L.Convolution(bottom, convolution_param=cp, param=list(param))


def deeplabv2_vgg16(split: str, *, num_classes: int = 21, exp: str = "voc12", root: str = DEEPLABV2_VOC_ROOT,
                    lists: str = DEEPLABV2_LISTS):
    """DeepLab-v2 ASPP VGG16 (Chen et al. 2016), layer for layer the release's ``train.prototxt`` (split
    ``train``: DeepLab's ``ImageSegData`` on ``train_aug.txt``, 321x321 random crops padded with the mean and
    ignore_label 255, mirrored, batches of 10; the labels shrunk by ``Interp`` to the score's 1/8 grid;
    SoftmaxWithLoss ignoring 255 in TRAIN; ``SegAccuracy``; ``Silence`` of ``data_dim``). ``val`` is the same
    net on ``val.txt`` as the release's test data layer reads it (centred 513x513 crops, batch 1), labelled.
    ``deploy``: an ``Input`` of 1x3x513x513 and the release's test head, ``fc8_interp`` (``Interp`` zoom 8:
    8(h-1)+1 x 8(w-1)+1 scores, 513x513 at 513x513).

    VGG16 with DeepLab's changes: 3x3 max pools of stride 2, 2, 2, 1, 1 (pad 1), conv5 dilated 2; four ASPP
    branches on pool5, each ``fc6_i`` (3x3, 1024, dilation 6/12/18/24) → ``fc7_i`` (1x1, 1024) with ReLU and
    Dropout 0.5 → ``fc8_<exp>_i`` (1x1 classifier, lr_mult 10/20, Gaussian 0.01), summed into ``fc8_<exp>``.
    The trunk has no fillers, as the release (its weights come from the release's init.caffemodel)."""
    from ...proto import caffe_pb2
    n = NetSpec()
    if split == "deploy":
        n.data = deploy_input((1, 3, 513, 513))
    else:
        train = split == "train"
        tp = dict(mirror=train, crop_size=321 if train else 513, mean_value=list(DEEPLABV2_MEAN))
        ip = dict(root_folder=root, source=f"{lists}/{'train_aug' if train else 'val'}.txt",
                  batch_size=10 if train else 1)
        if train:
            ip["shuffle"] = True
        ip["label_type"] = "PIXEL"
        n.data, n.label, n.data_dim = L.ImageSegData(
            ntop=3, include=dict(phase=caffe_pb2.TRAIN if train else caffe_pb2.TEST),
            transform_param=tp, image_data_param=ip)
    bottom = n.data
    for stage, (width, convs) in enumerate(zip((64, 128, 256, 512, 512), (2, 2, 3, 3, 3)), start=1):
        for k in range(1, convs + 1):
            name = f"conv{stage}_{k}"
            n[name] = _v2_conv(bottom, width, 3, pad=2 if stage == 5 else 1, dilation=2 if stage == 5 else 1)
            n[f"relu{stage}_{k}"] = L.ReLU(n[name], in_place=True)
            bottom = n[f"relu{stage}_{k}"]
        n[f"pool{stage}"] = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=3, stride=2 if stage < 4 else 1,
                                      pad=1)
        bottom = n[f"pool{stage}"]
    scores = []
    for i, rate in enumerate(DEEPLABV2_RATES, start=1):
        n[f"fc6_{i}"] = _v2_conv(n.pool5, 1024, 3, pad=rate, dilation=rate)
        n[f"relu6_{i}"] = L.ReLU(n[f"fc6_{i}"], in_place=True)
        n[f"drop6_{i}"] = L.Dropout(n[f"relu6_{i}"], in_place=True, dropout_ratio=0.5)
        n[f"fc7_{i}"] = _v2_conv(n[f"drop6_{i}"], 1024, 1)
        n[f"relu7_{i}"] = L.ReLU(n[f"fc7_{i}"], in_place=True)
        n[f"drop7_{i}"] = L.Dropout(n[f"relu7_{i}"], in_place=True, dropout_ratio=0.5)
        n[f"fc8_{exp}_{i}"] = _v2_conv(n[f"drop7_{i}"], num_classes, 1,
                                       param=(dict(lr_mult=10, decay_mult=1), dict(lr_mult=20, decay_mult=0)),
                                       weight_filler=dict(type="gaussian", std=0.01),
                                       bias_filler=dict(type="constant", value=0))
        scores.append(n[f"fc8_{exp}_{i}"])
    n[f"fc8_{exp}"] = L.Eltwise(*scores, operation=P.Eltwise.SUM)
    score = n[f"fc8_{exp}"]
    if split == "deploy":
        n.fc8_interp = L.Interp(score, interp_param=dict(zoom_factor=8))
        return n.to_proto()
    n.label_shrink = L.Interp(n.label, interp_param=dict(shrink_factor=8, pad_beg=0, pad_end=0))
    n.loss = L.SoftmaxWithLoss(score, n.label_shrink, ntop=0, include=dict(phase=caffe_pb2.TRAIN),
                               loss_param=dict(ignore_label=255))
    n.accuracy = L.SegAccuracy(score, n.label_shrink, seg_accuracy_param=dict(ignore_label=[255]))
    n.silence = L.Silence(n.data_dim, ntop=0)
    return n.to_proto()


def deeplabv2_solver(name: str):
    """The release's solver.prototxt (poly 0.9 from 1e-3, momentum 0.9, weight decay 5e-4, 20,000 iterations,
    losses averaged over 20 for display) plus a test net on VOC2012 val (1,449 images), run only at the end."""
    return solver(name, base_lr=1e-3, lr_policy="poly", power=0.9, momentum=0.9, weight_decay=0.0005,
                  max_iter=20000, snapshot=20000, test_iter=1449, display=20, average_loss=20)
