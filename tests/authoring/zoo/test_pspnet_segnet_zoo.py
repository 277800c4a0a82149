"""The zoo's fork nets: pspnet50_ade20k is the PSPNet release's net, segnet_camvid SegNet-Tutorial's, but for the
documented differences; their solvers train 3 iterations on demo-sized synthetic shapes."""
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netspec
from netspec.authoring import zoo
from netspec.data.synthetic import make_sample
from netspec.proto import caffe_pb2

FORKS = Path(__file__).resolve().parents[2] / "data" / "forks"


def released(rel):
    path = FORKS / rel
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as f:
        return text_format.Parse(f.read(), caffe_pb2.NetParameter())


def _strip(lp, *fields):
    out = caffe_pb2.LayerParameter()
    out.CopyFrom(lp)
    for f in fields:
        out.ClearField(f)
    for spec in out.param:  # the fork forces statistics blobs to lr_mult 0 / decay_mult 0 whatever is written
        if spec.lr_mult == 0:
            spec.decay_mult = 0
    return out


def test_pspnet_deploy_is_the_release():
    """Layer for layer: names, bottoms, tops, convolution / pooling / eltwise / concat fields, param specs.
    Differences: the Interp layers take their size from a 2nd bottom (the release: 60x60, zoom 8), the BN
    layers are not frozen (trainable; TEST uses the stored statistics either way), no Dropout in deploy."""
    mine = [l for l in zoo.net("pspnet50_ade20k", "deploy").layer[1:]]
    theirs = [l for l in released("pspnet/pspnet50_ADE20K_473.prototxt.gz").layer if l.type != "Dropout"]
    assert [l.name for l in mine] == [l.name for l in theirs]
    for a, b in zip(mine, theirs):
        if a.type == "Interp":
            assert list(a.bottom)[0] == b.bottom[0] and list(a.top) == list(b.top)
            assert a.bottom[1] == ("conv5_3" if a.name != "conv6_interp" else "data")
            continue
        if a.type == "BN":
            assert (a.bn_param.frozen, b.bn_param.frozen, a.bn_param.momentum) == (False, True, b.bn_param.momentum)
            a, b = _strip(a, "bn_param"), _strip(b, "bn_param")
        assert _strip(a) == _strip(b), a.name


def test_segnet_train_is_the_release():
    """segnet_train.prototxt but for the data layer (here: data/camvid, resized to 352x480), the Accuracy layer
    (left out), the Upsample sizes (scale 2 only) and softmax_param's engine."""
    mine = zoo.net("segnet_camvid", "train").layer
    theirs = [l for l in released("segnet/segnet_train.prototxt").layer if l.type != "Accuracy"]
    assert [l.name for l in mine] == [l.name for l in theirs]
    assert mine[0].type == theirs[0].type == "DenseImageData"
    for a, b in zip(mine[1:], theirs[1:]):
        if a.type == "Upsample":
            assert a.upsample_param.scale == 2 and list(a.bottom) == list(b.bottom) and list(a.top) == list(b.top)
            continue
        assert _strip(a) == _strip(b, "softmax_param"), a.name
    assert theirs[-1].loss_param.weight_by_label_freqs and mine[-1].loss_param == theirs[-1].loss_param


def _solver(name, size):
    """The zoo solver on the train net with an Input layer in place of the data layer (batch 2, BN needs it)."""
    train = zoo.net(name, "train")
    net = caffe_pb2.NetParameter()
    net.CopyFrom(train)
    data = caffe_pb2.LayerParameter(name="data", type="Input", top=["data", "label"])
    data.input_param.shape.add(dim=[2, 3, size, size])
    data.input_param.shape.add(dim=[2, 1, size, size])
    net.layer[0].CopyFrom(data)
    sp = zoo.solver(name)
    for field in ("train_net", "test_net", "test_iter", "snapshot"):
        sp.ClearField(field)
    sp.train_net_param.CopyFrom(net)
    sp.display = 0
    sp.iter_size = 1
    torch.manual_seed(0)
    return netspec.get_solver(sp)


@pytest.mark.parametrize("name,void", [pytest.param("pspnet50_ade20k", 255, marks=pytest.mark.slow),  # ~30 s
                                       ("segnet_camvid", 11)])
def test_solver_trains_three_iterations_on_synthetic_shapes(name, void):
    size = 32
    solver = _solver(name, size)
    rng = np.random.default_rng(0)
    before = {k: [b.data.copy() for b in v] for k, v in solver.net.params.items()}
    for _ in range(3):
        samples = [make_sample(rng, size) for _ in range(2)]
        solver.net.blobs["data"].data[...] = np.stack([(img.astype(np.float32) - 120) / 64 for img, _ in samples]
                                                      ).transpose(0, 3, 1, 2)
        labels = np.stack([lab for _, lab in samples])[:, None].astype(np.float32)
        solver.net.blobs["label"].data[...] = np.where(labels == 255, void, labels)
        solver.step(1)
        assert math.isfinite(solver.smoothed_loss) and solver.smoothed_loss > 0
    assert solver.iter == 3
    moved = [k for k, v in solver.net.params.items() if any(np.any(b.data != o) for b, o in zip(v, before[k]))]
    assert len(moved) > 0.9 * len(before)
    if name == "pspnet50_ade20k":  # BN statistics follow the batches (blobs 2, 3), moving average 0.95
        assert np.any(solver.net.params["conv1_1_3x3_s2/bn"][2].data != 0)
