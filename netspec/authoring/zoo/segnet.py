"""``segnet_camvid``: SegNet (Badrinarayanan, Kendall, Cipolla 2017) for CamVid's 11 classes, in SegNet's Caffe
dialect (``BN``, ``Upsample`` and ``DenseImageData`` of alexgkendall/caffe-segnet).

**Net.** Layer for layer alexgkendall/SegNet-Tutorial ``Models/segnet_train.prototxt``, names included (so
SegNet's released CamVid weights load name for name): the VGG16 encoder ``conv{s}_{i}`` (3×3, MSRA, bias
constant 0) → ``conv{s}_{i}_bn`` (SegNet's BN: scale 1, shift 0.001, ``bn_mode`` LEARN) → ``relu{s}_{i}``,
``pool{s}`` (2×2 max, with its argmax ``pool{s}_mask``); the mirrored decoder ``upsample{s}`` (max-unpooling
by ``pool{s}_mask``) → ``conv{s}_{i}_D`` → ``_bn`` → ``relu{s}_{i}_D``; ``conv1_1_D`` scores the 11 classes.
The release's parameter multipliers (weights 1/1, biases 2/0, BN scale 1/1 and shift 1/0) are kept.

One difference: the release fixes ``upsample5`` and ``upsample4`` to 23×30 and 45×60 (``upsample_h`` /
``upsample_w``: CamVid's 360×480 only); here every Upsample doubles (``scale: 2``) and the data layer resizes
CamVid to 352×480, so the net runs at any H×W that are multiples of 32 (the deploy net takes 1×3×352×480).

**BN.** ``bn_mode: LEARN`` in every split: SegNet's fork normalises with the batch's statistics in TEST too.
(SegNet's release then folds statistics gathered over the training set into scale and shift and switches
the inference net to ``bn_mode: INFERENCE``: ``tools/compute_bn_statistics.py prototxt/segnet_camvid/train.prototxt
WEIGHTS OUT_DIR`` does that here.)

**Data, loss, solver.** ``DenseImageData`` reading ``data/camvid/{train,val}.txt``, lines
``train/<name>.png trainannot/<name>.png`` relative to ``root_folder: "data/camvid/"`` (SegNet-Tutorial's CamVid
folder; its lists hold absolute ``/SegNet/CamVid/`` paths: strip that prefix), resized to 352×480 (image
bilinear, label nearest), no mean subtraction as the release; batches of 4, shuffled. SoftmaxWithLoss with the
release's class balancing (``weight_by_label_freqs``, its 11 ``class_weighting`` values) and ``ignore_label:
11`` (void). SGD as the release: base_lr 0.001, momentum 0.9, weight decay 5e-4, 40,000 iterations, snapshots
every 1,000; CamVid val's 101 images every 1,000.
"""
from ..dsl import NetSpec, layers as L, params as P
from .common import deploy_input, solver

__all__ = ["segnet", "segnet_solver", "NUM_CLASSES", "INPUT_SHAPE", "CLASS_WEIGHTING"]

NUM_CLASSES = 11
INPUT_SHAPE = (1, 3, 352, 480)
#: SegNet-Tutorial's CamVid median-frequency class weights (segnet_train.prototxt).
CLASS_WEIGHTING = (0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614)
VOID = 11
ENCODER = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))  # (stage, convolutions, width)
WIDTH = {s: w for s, _, w in ENCODER}
CONV_SPEC = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
BN_SPEC = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=1, decay_mult=0)]


def _conv_bn_relu(n, bottom, conv, bn, relu, nout):
    n[conv] = L.Convolution(bottom, convolution_param=dict(
        num_output=nout, kernel_size=3, pad=1, weight_filler=dict(type="msra"),
        bias_filler=dict(type="constant")), param=CONV_SPEC)
    n[bn] = L.BN(n[conv], in_place=True, param=BN_SPEC, bn_param=dict(
        scale_filler=dict(type="constant", value=1), shift_filler=dict(type="constant", value=0.001),
        ))
    n[relu] = L.ReLU(n[bn], in_place=True)
    return n[relu]


def _data(split, source):
    list_file = {"train": "train.txt", "val": "val.txt"}[split]
    p = dict(source=f"{source}/{list_file}", root_folder=f"{source}/", batch_size=4 if split == "train" else 1,
             new_height=INPUT_SHAPE[2], new_width=INPUT_SHAPE[3])
    if split == "train":
        p["shuffle"] = True
    return L.DenseImageData(dense_image_data_param=p, ntop=2)


def segnet(split: str, *, num_classes: int = NUM_CLASSES, source: str = "data/camvid"):
    """The ``train``, ``val`` or ``deploy`` net."""
    n = NetSpec()
    if split == "deploy":
        n.data = deploy_input(INPUT_SHAPE)
    else:
        n.data, n.label = _data(split, source)
    bottom = n.data
    for s, count, width in ENCODER:
        for i in range(1, count + 1):
            bottom = _conv_bn_relu(n, bottom, f"conv{s}_{i}", f"conv{s}_{i}_bn", f"relu{s}_{i}", width)
        n[f"pool{s}"], n[f"pool{s}_mask"] = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2, stride=2, ntop=2)
        bottom = n[f"pool{s}"]
    for s, count, width in reversed(ENCODER):
        n[f"pool{s}_D"] = L.Upsample(bottom, n[f"pool{s}_mask"], upsample_param=dict(scale=2),
                                     name=f"upsample{s}")
        bottom = n[f"pool{s}_D"]
        for i in range(count, 0, -1):
            if s == 1 and i == 1:
                break
            # a stage's last decoder conv narrows to the next stage's width (conv4_1_D: 256, ...)
            nout = width if i > 1 else WIDTH[s - 1]
            bottom = _conv_bn_relu(n, bottom, f"conv{s}_{i}_D", f"conv{s}_{i}_D_bn", f"relu{s}_{i}_D", nout)
    n.conv1_1_D = L.Convolution(bottom, convolution_param=dict(
        num_output=num_classes, kernel_size=3, pad=1, weight_filler=dict(type="msra"),
        bias_filler=dict(type="constant")), param=CONV_SPEC)
    if split != "deploy":
        n.loss = L.SoftmaxWithLoss(n.conv1_1_D, n.label, loss_param=dict(
            weight_by_label_freqs=True, ignore_label=VOID, class_weighting=list(CLASS_WEIGHTING)))
    return n.to_proto()



def segnet_solver(name: str = "segnet_camvid"):
    return solver(name, base_lr=0.001, momentum=0.9, weight_decay=0.0005, max_iter=40000, snapshot=1000,
                  test_iter=101, test_interval=1000)
