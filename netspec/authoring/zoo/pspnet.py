"""``pspnet50_ade20k``: PSPNet-50 (Zhao, Shi, Qi, Wang, Jia 2017) for ADE20K's 150 classes, in PSPNet's Caffe
dialect (the ``BN`` layer of hszhao/PSPNet).

**Net.** Layer for layer hszhao/PSPNet ``evaluation/prototxt/pspnet50_ADE20K_473.prototxt``, names included,
so the released ``pspnet50_ADE20K.caffemodel`` loads name for name: a deep stem (``conv1_1_3x3_s2``,
``conv1_2_3x3``, ``conv1_3_3x3``, each bias-free Convolution → ``/bn`` → ``/relu``, in place), ``pool1_3x3_s2``
(3×3/2 max, pad 1), bottleneck blocks ``conv{s}_{b}`` (``_1x1_reduce``, ``_3x3``, ``_1x1_increase``, a
``_1x1_proj`` shortcut in a stage's first block, Eltwise ``conv{s}_{b}`` and ``/relu``) with 3, 4, 6, 3 blocks,
stride 2 on ``conv3_1``'s 1×1 convolutions, and dilation 2 in stage 4 and 4 in stage 5 (output stride 8); then
the pyramid pooling module: ``conv5_3_pool{1,2,3,6}`` (AVE pooling with kernel = stride = 60 / bins, as the
release for 473×473 inputs) → 1×1 conv (512) → BN → ReLU → ``_interp``; ``conv5_3_concat``; ``conv5_4`` (3×3,
512) → BN → ReLU → ``conv5_4/dropout`` (0.1, train and val only); ``conv6`` (1×1, 150) → ``conv6_interp``. The
release's learning-rate multipliers (×10 on the head) are kept.

Two differences, both the same numbers at 473×473: the pyramid's Interp layers take ``conv5_3``'s size from a
2nd bottom instead of ``height: 60 width: 60``, and ``conv6_interp`` takes the data's size instead of
``zoom_factor: 8``; so other input sizes run too (the score always has the input's H×W).

**BN.** ``frozen: false``, ``momentum: 0.95``: in TRAIN the layers normalise with the batch's statistics and
keep moving averages in blobs 2 and 3 (lr_mult 0), in TEST (val, deploy) they use those, as PSPNet's fork.

**Data, loss, solver.** :class:`netspec.layers.seg_lmdb.SegDataLayer` on ``data/ade20k/{training,validation}`` (as
``fcn8s_vgg19_ade20k``: ``tools/build_seg_lmdb.py ade20k``), with PSPNet's ImageNet mean (BGR 103.939,
116.779, 123.68), random scale in [0.5, 2.0], rotation ±10°, mirror and 473×473 crops as the paper, batches of
4 with ``iter_size`` 4 (16 images per update, the paper's batch). SoftmaxWithLoss on ``conv6_interp``, ignoring
255, normalised over valid pixels (the paper's auxiliary loss on stage 4 is not part of the release's net and
is left out). SGD, ``poly`` (base_lr 0.01, power 0.9), momentum 0.9, weight decay 1e-4, 150,000 iterations;
ADE20K's 2,000 validation images every 5,000.
"""
from ..dsl import NetSpec, layers as L, params as P
from .common import deploy_input, seg_data, solver

__all__ = ["pspnet50", "pspnet_solver", "NUM_CLASSES", "INPUT_SHAPE", "BLOCKS"]

NUM_CLASSES = 150
INPUT_SHAPE = (1, 3, 473, 473)
#: (stage, blocks, bottleneck width, output width, stride, dilation) of PSPNet-50's ResNet.
BLOCKS = ((2, 3, 64, 256, 1, 1), (3, 4, 128, 512, 2, 1), (4, 6, 256, 1024, 1, 2), (5, 3, 512, 2048, 1, 4))
PSP_MEAN = (103.939, 116.779, 123.68)
FEATURE = 60  # conv5_3's size at 473x473: the pyramid's kernels are FEATURE / bins
BINS = (1, 2, 3, 6)
TRAIN_AUGMENT = dict(batch_size=4, crop=473, mirror=True, rotate=10, scale_jitter=(0.5, 2.0), mean=PSP_MEAN,
                     seed=1337)


def _specs(mult):
    conv = [dict(lr_mult=mult, decay_mult=1)]
    bn = [dict(lr_mult=mult, decay_mult=0)] * 2 + [dict(lr_mult=0, decay_mult=0)] * 2
    return conv, bn


def _bn_param():
    return dict(slope_filler=dict(type="constant", value=1), bias_filler=dict(type="constant", value=0),
                frozen=False, momentum=0.95)


def _conv_bn(n, bottom, name, nout, ks, stride=1, pad=0, dilation=1, relu=True, mult=1):
    """``name`` (bias-free, MSRA) → ``name/bn`` (→ ``name/relu``), in place; returns the last top."""
    conv_spec, bn_spec = _specs(mult)
    cp = dict(num_output=nout, bias_term=False, pad=pad, kernel_size=ks, stride=stride,
              weight_filler=dict(type="msra"))
    if pad is None:  # the pyramid's 1x1 convolutions write no pad field
        del cp["pad"]
    if dilation > 1:
        cp["dilation"] = dilation
    n[name] = L.Convolution(bottom, convolution_param=cp, param=conv_spec)
    n[f"{name}/bn"] = L.BN(n[name], in_place=True, bn_param=_bn_param(), param=bn_spec)
    if not relu:
        return n[f"{name}/bn"]
    n[f"{name}/relu"] = L.ReLU(n[f"{name}/bn"], in_place=True)
    return n[f"{name}/relu"]


def pspnet50(split: str, *, num_classes: int = NUM_CLASSES, source: str = "data/ade20k"):
    """The ``train``, ``val`` or ``deploy`` net."""
    n = NetSpec()
    if split == "deploy":
        n.data = deploy_input(INPUT_SHAPE)
    elif split == "train":
        n.data, n.label = seg_data(f"{source}/training", **TRAIN_AUGMENT)
    else:
        n.data, n.label = seg_data(f"{source}/validation", mean=PSP_MEAN, seed=1337)
    top = _conv_bn(n, n.data, "conv1_1_3x3_s2", 64, 3, stride=2, pad=1)
    top = _conv_bn(n, top, "conv1_2_3x3", 64, 3, pad=1)
    top = _conv_bn(n, top, "conv1_3_3x3", 128, 3, pad=1)
    n.pool1_3x3_s2 = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=2, pad=1)
    bottom = n.pool1_3x3_s2
    for stage, blocks, width, out, stride, dilation in BLOCKS:
        for b in range(1, blocks + 1):
            name, s = f"conv{stage}_{b}", (stride if b == 1 else 1)
            top = _conv_bn(n, bottom, f"{name}_1x1_reduce", width, 1, stride=s)
            top = _conv_bn(n, top, f"{name}_3x3", width, 3, pad=dilation, dilation=dilation)
            top = _conv_bn(n, top, f"{name}_1x1_increase", out, 1, relu=False)
            shortcut = _conv_bn(n, bottom, f"{name}_1x1_proj", out, 1, stride=s, relu=False) if b == 1 else bottom
            n[name] = L.Eltwise(shortcut, top, eltwise_param=dict(operation=P.Eltwise.SUM))
            n[f"{name}/relu"] = L.ReLU(n[name], in_place=True)
            bottom = n[f"{name}/relu"]
    conv5_3 = bottom
    branches = {}
    for bins in BINS:
        name = f"conv5_3_pool{bins}"
        n[name] = L.Pooling(conv5_3, pool=P.Pooling.AVE, kernel_size=FEATURE // bins, stride=FEATURE // bins)
        top = _conv_bn(n, n[name], f"{name}_conv", 512, 1, pad=None, mult=10)
        n[f"{name}_interp"] = L.Interp(top, conv5_3)  # to conv5_3's H x W (the release: 60 x 60)
        branches[bins] = n[f"{name}_interp"]
    n.conv5_3_concat = L.Concat(conv5_3, *(branches[b] for b in (6, 3, 2, 1)))
    top = _conv_bn(n, n.conv5_3_concat, "conv5_4", 512, 3, pad=1, mult=10)
    if split != "deploy":
        n["conv5_4/dropout"] = L.Dropout(top, in_place=True, dropout_param=dict(dropout_ratio=0.1))
        top = n["conv5_4/dropout"]
    n.conv6 = L.Convolution(top, convolution_param=dict(num_output=num_classes, kernel_size=1, stride=1,
                                                        weight_filler=dict(type="msra")),
                            param=[dict(lr_mult=10, decay_mult=1), dict(lr_mult=20, decay_mult=1)])
    n.conv6_interp = L.Interp(n.conv6, n.data)  # to the input's H x W (the release: zoom_factor 8)
    if split != "deploy":
        n.loss = L.SoftmaxWithLoss(n.conv6_interp, n.label,
                                   loss_param=dict(ignore_label=255, normalization="VALID"))
    return n.to_proto()


def pspnet_solver(name: str = "pspnet50_ade20k"):
    return solver(name, base_lr=0.01, lr_policy="poly", power=0.9, momentum=0.9, weight_decay=1e-4, iter_size=4,
                  max_iter=150000, snapshot=5000, test_iter=2000, test_interval=5000)
