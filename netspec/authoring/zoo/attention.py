"""An FCN with attention: stride-2 VGG16 encoder, ASPP, and a squeeze-and-excitation U-decoder.

Layers, top to bottom (``attention_fcn_cityscapes``: 19 classes, ``attention_fcn_voc``: 21):

* **Encoder**: VGG16's thirteen 3×3 convolutions under VGG's names (``conv1_1`` … ``conv5_3``,
  so :func:`netspec.authoring.surgery.transplant` copies ImageNet weights into them), no 100-pixel input
  padding, and each of the five max-poolings replaced by a learned 3×3 stride-2 convolution
  (pad 1) + ReLU, ``down1`` … ``down5``. A stage's size is ``ceil(size / 2)`` of the previous one,
  so any input size builds.
* **ASPP** on ``down5`` (1/32): a 1×1 convolution and three 3×3 convolutions of dilation 6, 12,
  18 (256 channels each, ReLU), concatenated and projected by a 1×1 convolution to 256, plus the
  image-level branch: global average pooling, a 1×1 convolution + ReLU, and that branch's share
  of the projection (1×1, no bias), flattened to N×256 and added at every position by a ``Bias``
  layer with two bottoms (axis 0). Upsampling a 1×1 map to H×W is a broadcast and the projection
  is linear, so this equals "upsample, concatenate, project" while building at any size in BVLC
  Caffe itself (``Interp`` is a fork's layer; Tile and Deconvolution need a fixed size).
* **Decoder**, five levels from 1/16 to 1/1, level k fusing encoder stage k (``conv5_3``,
  ``conv4_3``, ``conv3_3``, ``conv2_2``, ``conv1_2``):

  - ``up{k}``: a learned depthwise deconvolution (kernel 4, stride 2, pad 1, ``group`` =
    channels), initialised by Caffe's ``bilinear`` filler, which is exact 2× bilinear
    interpolation for this size and for depthwise layers only;
  - ``up{k}_conv``: a 2×2 convolution (pad 1) + ReLU to the level's width (256, 128, 64, 32,
    32). Its even kernel moves the grid by half a pixel: a 3×3 stride-2 convolution centres
    output j on input 2j, the factor-2 bilinear deconvolution puts input j at output 2j + 1/2,
    and no integer Crop bridges half a pixel (``netspec.authoring.coord_map.crop`` refuses). After it,
    pixel j + 1 of the upsampled blob sits on pixel j of the encoder's, so every skip Crop has
    offset 1, and the upsampled blob (2·ceil(n/2) + 1 for a stage of n) always covers the stage;
  - ``skip{k}``: a 1×1 projection of the encoder stage; ``up{k}c``: the Crop of ``up{k}_conv``
    to it (offset computed by :func:`netspec.authoring.coord_map.crop`); ``fuse{k}``: Eltwise SUM + ReLU;
  - squeeze-and-excitation ``se{k}``: global average pooling, 1×1 convolution to channels/16
    (at least 8: with 2 or 4 ReLU units an SE block is often dead from its first step, its gate
    stuck), ReLU, 1×1 convolution back (no filler: Caffe's constant 0, so every gate starts at
    1/2; the features of unscaled BGR input are tens in size and a random start saturates the
    sigmoid), Sigmoid, Flatten to N×C, and a ``Scale`` layer with those weights as its second
    bottom, ``axis: 0``: Caffe's Scale multiplies bottom 0 by bottom 1 laid over bottom 0's axes
    [axis, axis + bottom1.num_axes), here (N, C), broadcast over H×W.

* ``classifier``: 1×1 at full resolution, gaussian std 0.01 as DeepLab's classifier (the
  features of unscaled BGR input are tens in size; msra-sized class scores start the loss near
  60); ``score``, its Crop to the input; SoftmaxWithLoss with ``ignore_label: 255`` and
  ``normalization: VALID`` (the mean over labelled pixels, so the learning rate is an ordinary
  one).

The other convolutions have ``msra`` weight fillers (bias 0), so the nets train from scratch; the
encoder's names let a VGG16 transplant replace that. Deploy nets have an ``Input`` layer named
``input``: 1×3×1024×2048 (Cityscapes), 1×3×500×500 (VOC).

Data: :class:`netspec.layers.seg_lmdb.SegDataLayer` on the LMDB pairs of ``tools/build_seg_lmdb.py``::

    python tools/build_seg_lmdb.py cityscapes CITYSCAPES_ROOT data/cityscapes/train --split train
    python tools/build_seg_lmdb.py cityscapes CITYSCAPES_ROOT data/cityscapes/val --split val
    python tools/build_seg_lmdb.py voc VOCdevkit data/pascal/train_aug --sbd SBD/dataset
    python tools/build_seg_lmdb.py voc VOCdevkit data/pascal/val --split val

Training takes random square crops (SegDataLayer crops squares; labels padded with 255 where a
crop leaves the image), random mirroring and scale jitter: Cityscapes 768×768 crops of the
1024×2048 images (3/4 of the height, a multiple of 32), scale 0.5–1.5, batch 2; VOC 512×512
crops, scale 0.5–1.5, batch 4. Validation reads whole images, batch 1. Solver: SGD, ``poly``
policy (power 0.95), base_lr 1e-3, momentum 0.9, weight decay 5e-4; 90k iterations for
Cityscapes (about 60 epochs of its 2,975 images), 50k for VOC train_aug (about 19 epochs of
10,582), snapshots every 5,000.
"""
from typing import NamedTuple, Tuple

from ...data.classes import CITYSCAPES_CLASSES, VOC_CLASSES
from ..coord_map import crop
from ..dsl import NetSpec, layers as L, params as P
from .common import CONV_PARAM, VGG_STAGES, VGG_WIDTHS, deploy_input, python_data, softmax_loss, solver

__all__ = ["Dataset", "CITYSCAPES", "VOC", "attention_fcn", "attention_solver", "ASPP_WIDTH",
           "DECODER_WIDTHS", "SE_REDUCTION", "SE_MIN_HIDDEN", "ASPP_DILATIONS"]

ASPP_WIDTH = 256
ASPP_DILATIONS = (6, 12, 18)
#: Decoder width at the level fusing encoder stage 5 (1/16) … stage 1 (full resolution).
DECODER_WIDTHS = {5: 256, 4: 128, 3: 64, 2: 32, 1: 32}
SE_REDUCTION = 16
#: Fewest hidden units of an SE block (timm's floor): with 2 or 4 ReLU units a block is often dead
#: from the start (every pre-activation negative) and its gate stuck at sigmoid(bias).
SE_MIN_HIDDEN = 8
#: A learned bias-free blob (the deconvolutions): decay would pull the bilinear kernels to 0.
NO_DECAY = (dict(lr_mult=1, decay_mult=0),)


class Dataset(NamedTuple):
    """What differs between the two models: classes, SegDataLayer settings, deploy size, solver."""
    name: str
    num_classes: int
    train: Tuple[Tuple[str, object], ...]  # SegDataLayer param_str (key, value) in order
    val: Tuple[Tuple[str, object], ...]
    deploy_shape: Tuple[int, ...]
    max_iter: int
    test_iter: int


CITYSCAPES = Dataset(
    "cityscapes", len(CITYSCAPES_CLASSES),
    (("source", "data/cityscapes/train"), ("seed", 1337), ("batch_size", 2), ("crop", 768),
     ("scale_jitter", (0.5, 1.5))),
    (("source", "data/cityscapes/val"), ("seed", 1337)),
    (1, 3, 1024, 2048), max_iter=90000, test_iter=500)
VOC = Dataset(
    "voc", len(VOC_CLASSES),
    (("source", "data/pascal/train_aug"), ("seed", 1337), ("batch_size", 4), ("crop", 512),
     ("scale_jitter", (0.5, 1.5))),
    (("source", "data/pascal/val"), ("seed", 1337)),
    (1, 3, 500, 500), max_iter=50000, test_iter=1449)


def _conv(bottom, nout, ks, pad=0, **kwargs):
    return L.Convolution(bottom, num_output=nout, kernel_size=ks, pad=pad, param=list(CONV_PARAM),
                         weight_filler=dict(type="msra"), **kwargs)


def _conv_relu(n, name, bottom, nout, ks, pad=0, relu=None, **kwargs):
    n[name] = _conv(bottom, nout, ks, pad, **kwargs)
    n[relu or f"relu_{name}"] = L.ReLU(n[name], in_place=True)
    return n[relu or f"relu_{name}"]


def _global_pool(bottom):
    return L.Pooling(bottom, pool=P.Pooling.AVE, global_pooling=True)


def encoder(n: NetSpec, data):
    """VGG16's convolutions with stride-2 3×3 convolutions for its poolings.

    Returns ({stage: last convolution's top}, the 1/32 top)."""
    stages = {}
    bottom = data
    for stage, (count, width) in enumerate(zip(VGG_STAGES["vgg16"], VGG_WIDTHS), start=1):
        for i in range(1, count + 1):
            bottom = _conv_relu(n, f"conv{stage}_{i}", bottom, width, 3, pad=1,
                                relu=f"relu{stage}_{i}")
        stages[stage] = bottom
        bottom = _conv_relu(n, f"down{stage}", bottom, width, 3, pad=1, stride=2)
    return stages, bottom


def aspp(n: NetSpec, bottom):
    """Atrous spatial pyramid pooling; returns its 256-channel top at the bottom's size."""
    branches = [_conv_relu(n, "aspp_1x1", bottom, ASPP_WIDTH, 1)]
    for d in ASPP_DILATIONS:
        branches.append(_conv_relu(n, f"aspp_r{d}", bottom, ASPP_WIDTH, 3, pad=d, dilation=d))
    n.aspp_concat = L.Concat(*branches)
    n.aspp_proj = _conv(n.aspp_concat, ASPP_WIDTH, 1)
    n.aspp_pool = _global_pool(bottom)
    image = _conv_relu(n, "aspp_pool_conv", n.aspp_pool, ASPP_WIDTH, 1)
    n.aspp_pool_proj = L.Convolution(image, num_output=ASPP_WIDTH, kernel_size=1, bias_term=False,
                                     param=[CONV_PARAM[0]], weight_filler=dict(type="msra"))
    n.aspp_pool_flat = L.Flatten(n.aspp_pool_proj)                            # (N, 256)
    n.aspp = L.Bias(n.aspp_proj, n.aspp_pool_flat, axis=0)
    n.relu_aspp = L.ReLU(n.aspp, in_place=True)
    return n.relu_aspp


def squeeze_excite(n: NetSpec, name: str, bottom, channels: int):
    """``bottom`` × sigmoid(W2 relu(W1 avgpool(bottom))) per channel (Scale, axis 0)."""
    n[f"{name}_pool"] = _global_pool(bottom)
    down = _conv_relu(n, f"{name}_down", n[f"{name}_pool"],
                      max(SE_MIN_HIDDEN, channels // SE_REDUCTION), 1)
    n[f"{name}_up"] = L.Convolution(down, num_output=channels, kernel_size=1,
                                    param=list(CONV_PARAM))                # weights start at 0
    n[f"{name}_gate"] = L.Sigmoid(n[f"{name}_up"])
    n[f"{name}_w"] = L.Flatten(n[f"{name}_gate"])                              # (N, C)
    n[name] = L.Scale(bottom, n[f"{name}_w"], axis=0)
    return n[name]


def decoder_level(n: NetSpec, k: int, bottom, channels_in: int, skip_bottom):
    """Upsample ``bottom`` 2×, fuse encoder stage ``k``'s projection, re-weight by SE."""
    width = DECODER_WIDTHS[k]
    n[f"up{k}"] = L.Deconvolution(bottom, param=list(NO_DECAY), convolution_param=dict(
        num_output=channels_in, group=channels_in, kernel_size=4, stride=2, pad=1,
        bias_term=False, weight_filler=dict(type="bilinear")))
    up = _conv_relu(n, f"up{k}_conv", n[f"up{k}"], width, 2, pad=1)
    n[f"skip{k}"] = _conv(skip_bottom, width, 1)
    n[f"up{k}c"] = crop(up, n[f"skip{k}"])
    n[f"fuse{k}"] = L.Eltwise(n[f"up{k}c"], n[f"skip{k}"], operation=P.Eltwise.SUM)
    n[f"relu_fuse{k}"] = L.ReLU(n[f"fuse{k}"], in_place=True)
    return squeeze_excite(n, f"se{k}", n[f"relu_fuse{k}"], width)


def attention_fcn(split: str, dataset: Dataset = CITYSCAPES):
    """The ``train``, ``val`` or ``deploy`` net of ``dataset``."""
    n = NetSpec()
    if split == "deploy":
        n.data = deploy_input(dataset.deploy_shape)
    else:
        fields = dataset.train if split == "train" else dataset.val
        n.data, n.label = python_data("netspec.data.seg", "SegDataLayer", "{" + ", ".join(
            f"{k!r}: {v!r}" for k, v in fields) + "}")
    stages, bottom = encoder(n, n.data)
    top, channels = aspp(n, bottom), ASPP_WIDTH
    for k in range(5, 0, -1):
        top = decoder_level(n, k, top, channels, stages[k])
        channels = DECODER_WIDTHS[k]
    n.classifier = L.Convolution(top, num_output=dataset.num_classes, kernel_size=1,
                                 param=list(CONV_PARAM),
                                 weight_filler=dict(type="gaussian", std=0.01))
    n.score = crop(n.classifier, n.data)
    if split != "deploy":
        n.loss = softmax_loss(n.score, n.label, normalize=None, normalization="VALID")
    return n.to_proto()


def attention_solver(dataset: Dataset = CITYSCAPES):
    return solver(f"attention_fcn_{dataset.name}", base_lr=1e-3, lr_policy="poly", power=0.95,
                  momentum=0.9, weight_decay=5e-4, max_iter=dataset.max_iter, snapshot=5000,
                  test_iter=dataset.test_iter)
