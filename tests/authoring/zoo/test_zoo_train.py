"""Every zoo model's train net trains, as a user would train it from Python.

The nets are the real ones (``zoo.net(name, 'train')``, VGG16 widths included); only the data
layer is swapped, by a proto-to-proto edit, for an ``Input`` layer of the same name and tops that
the test fills before each ``solver.step(1)`` (pycaffe style): 32×32 images (FCN's conv1_1 pad
100 makes even that a 230×230 conv1), one at a time (two for nets with BatchNorm), fed as
(BGR - mean) / 64. Weights: what a user without a VGG16 caffemodel does with ``surgery`` -- the
layers ``surgery.zero_layers`` reports (Caffe's default filler is 0) are He-initialised where a
transplant would have filled them (He init is for such unit-sized inputs; VGG16's weights are
for raw BGR), FCN's ``score*`` layers stay zero (FCN's own choice), zero Deconvolutions get
``surgery.interp``'s bilinear kernels, and empty BatchNorms unit-normal statistics.

Solvers are the zoo's (type, momentum, lr_mult per blob) with two changes: ``weight_decay`` 0,
so a parameter that changed was moved by its gradient, and a fixed learning rate fit for 20
iterations from scratch. For SGD it is set by the steady-state step Caffe's update reaches,
``base_lr / (1 - momentum)`` = 0.06 per pixel of the loss: 6e-3 at momentum 0.9 (the attention
FCN), 6e-4 at FCN's 0.99, divided by H·W for FCN's unnormalised loss, the sum over pixels (the
published 1e-10 … 1e-14 are for 500×500 images, a VGG16 start and 100k iterations: in 20 they
move nothing visible). Adam keeps the model's own rate.

Default run: two iterations of the demo and FCN-8s (VGG16), 20 of the demo and the attention FCN;
every other model, in both tests, is ``-m slow``.
"""
import math

import numpy as np
import pytest
import torch

import netspec
from netspec.authoring import surgery, zoo
from netspec.data.synthetic import make_sample
from netspec.errors import SolverError
from netspec.proto import caffe_pb2

SIZE = 32
MEAN = np.array((104.00699, 116.66877, 122.67892), np.float32)
#: Images are fed as (BGR - MEAN) * SCALE: unit-sized, as the He init assumes (VGG16's weights,
#: which the FCNs expect, are made for raw BGR).
SCALE = 1 / 64
#: Channels of the data layers' image tops (NYUDv2's depth is one channel); others have 3.
CHANNELS = {"depth": 1}
#: SGD's steady-state step base_lr / (1 - momentum) in the test solvers, for a per-pixel loss.
STEP = 0.06

TWO_ITERATIONS = ("demo", "fcn8s_voc")
LOSS_FALLS = ("demo", "attention_fcn_voc")
#: Models that cannot train 20 iterations from random weights, and why (strict xfail). None at present:
#: deeplabv3_resnet101_idd (trunk BatchNorms with global statistics, meant to be ImageNet's) was listed as
#: turning NaN; on 2026-12-08 its strict xfail passed (loss 3.26 -> 1.43 in 6 iterations, at commit 450ae39
#: as well), so it is expected to train like the others.
NOT_FROM_SCRATCH = {}


#: Models these tests cannot run at SIZE, and why.
OTHER_SIZE = {
    "deeplabv2_vgg16_voc": "DeepLab's label_shrink (Interp shrink_factor 8) needs 8k + 1 pixels; "
                           "tests/authoring/zoo/test_deeplab_v2_zoo.py trains it at 33x33",
}


def _split(default, xfail=None):
    params = []
    for name in zoo.names():
        marks = [] if name in default else [pytest.mark.slow]
        if name in OTHER_SIZE:
            marks.append(pytest.mark.skip(reason=OTHER_SIZE[name]))
        if xfail and name in xfail:
            marks.append(pytest.mark.xfail(raises=SolverError, strict=True, reason=xfail[name]))
        params.append(pytest.param(name, marks=marks))
    return params


def loss_layers(net):
    return [l for l in net.layer if l.type == "SoftmaxWithLoss"]


def per_pixel(loss_layer) -> bool:
    """Whether SoftmaxWithLoss divides by the pixel count (Caffe: ``normalization`` when set, else
    ``normalize`` true/false -> VALID/BATCH_SIZE when set, else the schema's default)."""
    p = loss_layer.loss_param
    N = caffe_pb2.LossParameter
    if not p.HasField("normalization") and p.HasField("normalize"):
        mode = N.VALID if p.normalize else N.BATCH_SIZE
    else:
        mode = p.normalization
    return mode in (N.VALID, N.FULL)


def with_input_layer(net, shapes):
    """``net`` with its data layer (the first, without bottoms) replaced by an ``Input`` layer of
    the same name and tops, ``shapes[top]`` each; every other layer as it was."""
    data = net.layer[0]
    assert not data.bottom and data.type in ("Python", "Data", "ImageData", "HDF5Data", "DenseImageData",
                                             "ImageSegData"), data.type
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    layer = caffe_pb2.LayerParameter(name=data.name, type="Input", top=list(data.top))
    for top in data.top:
        layer.input_param.shape.add(dim=shapes[top])
    out.layer[0].CopyFrom(layer)
    return out


def batch_size(net):
    """1, or 2 for nets with BatchNorm: its batch statistics over one image's 1×1 blob (an ASPP
    image-pooling branch) are that blob itself, so such a branch outputs 0 and learns nothing."""
    return 2 if any(l.type in ("BatchNorm", "BN") for l in net.layer) else 1


def input_shapes(net, size=SIZE):
    labels = {l.bottom[1] for l in loss_layers(net)}
    return {t: [batch_size(net), 1 if t in labels else CHANNELS.get(t, 3), size, size]
            for t in net.layer[0].top}


def init_like_a_user(net):
    """He init for the zero layers a transplant would fill, bilinear kernels for zero
    Deconvolutions, unit-normal statistics for empty BatchNorms; ``score*`` layers stay zero."""
    gen = torch.Generator().manual_seed(0)
    for name in surgery.zero_layers(net):
        layer = net.layer_dict[name]
        if layer.type == "Deconvolution":
            surgery.interp(net, [name])
        elif layer.type == "BatchNorm" and not any(b.data.any() for b in layer.blobs):
            for blob in layer.blobs[1:]:  # mean 0, variance 1, scale factor 1
                blob.data = np.ones(blob.shape, np.float32)
        elif layer.type in ("Convolution", "InnerProduct") and not name.startswith("score"):
            w = layer.blobs[0]
            fan_in = math.prod(w.shape[1:])
            w.data = torch.randn(w.shape, generator=gen).numpy() * math.sqrt(2.0 / fan_in)


def make_solver(name, size=SIZE):
    train = zoo.net(name, "train")
    net = with_input_layer(train, input_shapes(train, size))
    sp = zoo.solver(name)
    for field in ("train_net", "test_net", "test_iter", "snapshot"):
        sp.ClearField(field)
    sp.train_net_param.CopyFrom(net)
    sp.weight_decay = 0
    sp.lr_policy = "fixed"
    if sp.type != "Adam":
        rate = STEP * (1 - sp.momentum)
        sp.base_lr = rate if all(per_pixel(l) for l in loss_layers(net)) else rate / (size * size)
    sp.display = 0
    torch.manual_seed(0)
    solver = netspec.get_solver(sp)
    init_like_a_user(solver.net)
    return solver, net


def classes(solver, net):
    """{label top: class count}, from the channels of the score each loss reads."""
    return {l.bottom[1]: solver.net.blobs[l.bottom[0]].shape[1] for l in loss_layers(net)}


def feed(solver, net, samples):
    """Fill the Input tops from (image, label) pairs, one per batch item: scaled BGR minus the
    mean for 3-channel tops, its grey level for 1-channel ones, and the label clipped into each
    label top's class range (255 becomes the loss's ignore_label)."""
    ncls = classes(solver, net)
    # the void value each loss ignores (255, CamVid's 11 in SegNet)
    void = {l.bottom[1]: l.loss_param.ignore_label if l.loss_param.HasField("ignore_label") else 255
            for l in loss_layers(net)}
    for top in net.layer[0].top:
        blob = solver.net.blobs[top]
        assert blob.shape[0] == len(samples)
        for n, (image, label) in enumerate(samples):
            if top in ncls:
                blob.data[n, 0] = np.where(label == 255, void[top], np.minimum(label, ncls[top] - 1))
            elif blob.shape[1] == 1:
                blob.data[n, 0] = (image.mean(axis=2) - MEAN.mean()) * SCALE
            else:
                blob.data[n] = ((image.astype(np.float32) - MEAN) * SCALE).transpose(2, 0, 1)


def lr_mults(solver):
    """{(layer, blob index): lr_mult} of every parameter blob (1 where no ParamSpec is given)."""
    out = {}
    for lp in solver.net.net_param.layer:
        if lp.name in solver.net.params:
            for j in range(len(solver.net.params[lp.name])):
                out[(lp.name, j)] = lp.param[j].lr_mult if j < len(lp.param) else 1.0
    return out


def test_the_data_layer_swap_changes_only_the_data_layer():
    for name in zoo.names():
        train = zoo.net(name, "train")
        shapes = input_shapes(train)
        swapped = with_input_layer(train, shapes)
        assert swapped.layer[1:] == train.layer[1:], name
        data, new = train.layer[0], swapped.layer[0]
        assert (new.name, new.type, list(new.top)) == (data.name, "Input", list(data.top))
        assert [list(s.dim) for s in new.input_param.shape] == [shapes[t] for t in data.top]
    assert input_shapes(zoo.net("fcn32s_nyud_color_d", "train")) == {
        "color": [1, 3, SIZE, SIZE], "depth": [1, 1, SIZE, SIZE], "label": [1, 1, SIZE, SIZE]}


def snapshot_params(solver):
    return {k: [b.data.copy() for b in v] for k, v in solver.net.params.items()}


def frozen_blobs_that_changed(solver, before):
    """Blobs with lr_mult 0 that changed (BatchNorm's statistics aside: the forward pass updates
    them in TRAIN)."""
    types = {l.name: l.type for l in solver.net.net_param.layer}
    return [f"{layer}[{j}]" for (layer, j), lr in lr_mults(solver).items()
            if lr == 0 and types[layer] not in ("BatchNorm", "BN")
            and np.any(solver.net.params[layer][j].data != before[layer][j])]


def assert_last_step_updated_every_learnable_blob(solver, before):
    """After a step, Caffe's diffs hold the update just applied. Every blob with lr_mult > 0 got a
    non-zero one and changed wherever it is at least one float32 ulp of the weight (deep in a net
    at its random start an update can be smaller: the weight then keeps its value)."""
    no_update, unchanged = [], []
    for (layer, j), lr in lr_mults(solver).items():
        if lr == 0:
            continue
        blob, old = solver.net.params[layer][j], before[layer][j]
        if not np.any(blob.diff):
            no_update.append(f"{layer}[{j}]")
        big = np.abs(blob.diff) >= np.spacing(np.abs(old))
        if np.any(blob.data[big] == old[big]):
            unchanged.append(f"{layer}[{j}]")
    assert not no_update, f"learnable blobs without an update: {no_update}"
    assert not unchanged, f"learnable blobs that did not take their update: {unchanged}"
    assert not frozen_blobs_that_changed(solver, before), "lr_mult 0 blobs changed"


@pytest.mark.parametrize("name", _split(TWO_ITERATIONS))
def test_trains_two_iterations_on_random_data(name):
    """Random images and random labels in the class range (a tenth of the pixels ignored)."""
    solver, net = make_solver(name)
    rng = np.random.default_rng(0)
    ncls = max(classes(solver, net).values())
    for _ in range(2):
        images = rng.integers(0, 256, (batch_size(net), SIZE, SIZE, 3)).astype(np.uint8)
        labels = rng.integers(0, ncls, (batch_size(net), SIZE, SIZE)).astype(np.uint8)
        labels[rng.random(labels.shape) < 0.1] = 255
        feed(solver, net, list(zip(images, labels)))
        before = snapshot_params(solver)
        solver.step(1)
        assert math.isfinite(solver.smoothed_loss) and solver.smoothed_loss > 0
    assert solver.iter == 2
    assert_last_step_updated_every_learnable_blob(solver, before)


@pytest.mark.parametrize("name", _split(LOSS_FALLS, NOT_FROM_SCRATCH))
def test_loss_falls_over_20_iterations_on_synthetic_shapes(name):
    """Four of the demo's synthetic images (discs, squares, triangles on noise; labels clipped
    into the model's classes) cycled for 20 iterations: the last five losses average under 4/5
    of the first (before any update), and every learnable blob has moved. (KITTI road, two
    classes, dropout 0.75, Adam at its 1e-4, comes to 3/4.)"""
    solver, net = make_solver(name)
    before = snapshot_params(solver)
    rng = np.random.default_rng(1)
    samples = [make_sample(rng, SIZE) for _ in range(4)]
    n = batch_size(net)
    losses = []
    for i in range(20):
        feed(solver, net, [samples[(i * n + k) % len(samples)] for k in range(n)])
        solver.step(1)
        losses.append(solver.smoothed_loss)
    assert all(math.isfinite(x) for x in losses), losses
    assert np.mean(losses[-5:]) < 0.8 * losses[0], losses
    stuck = [f"{layer}[{j}]" for (layer, j), lr in lr_mults(solver).items()
             if lr > 0 and np.array_equal(solver.net.params[layer][j].data, before[layer][j])]
    assert not stuck, f"learnable blobs that never changed: {stuck}"
    assert not frozen_blobs_that_changed(solver, before), "lr_mult 0 blobs changed"
