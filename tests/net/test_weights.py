"""Transfer learning as users do it: DeepLabv3's trunk from a ResNet-101 caffemodel in the format of Kaiming He's
Caffe release, only the head trained (``deeplabv3_resnet101_idd_head``):

    python tools/train.py --solver solvers/deeplabv3_resnet101_idd_head.prototxt \\
        --weights data/models/ResNet-101-model.caffemodel

The caffemodel here is written by netspec's own writer from the release's deploy layout
(:func:`netspec.authoring.zoo.deeplab.resnet101_deploy`: trunk + pool5 + fc1000 + prob) with random weights, so every
trunk layer has to be found by name. Training runs on the synthetic demo shapes (4 of the 26 classes) at small
crops on the CPU. The solver updates every blob, lr_mult 0 included (Caffe's rule), so an iteration costs
seconds there; the default run trains a few iterations, the 20-iteration runs are marked slow."""
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import netspec
from netspec.formats import binary
from netspec.passes import upgrade
from netspec.authoring import zoo
from netspec.data.synthetic import pack
from netspec.solver.solvers import Solver
from netspec.authoring.zoo.deeplab import resnet101_deploy

ROOT = Path(__file__).resolve().parents[2]
HEAD = "deeplabv3_resnet101_idd_head"


def write_release_caffemodel(path, seed=0):
    """A ResNet-101 caffemodel in the release's layout with random weights of a sane scale: He-initialised
    convolutions, BatchNorm statistics near (0, 1) with scale factor 1, residual branches damped by their
    Scale so the 33 blocks do not blow the activations up, a random fc1000. Returns the net."""
    net = netspec.Net(resnet101_deploy(), netspec.TEST)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for node in net.module.nodes:
            blobs = net.module.layer_blobs(node.index)
            if node.type == "Convolution":
                w = blobs[0]
                w.copy_(torch.randn(w.shape, generator=g) * (2.0 / w[0].numel()) ** 0.5)
            elif node.type == "BatchNorm":
                blobs[0].copy_(torch.randn(blobs[0].shape, generator=g) * 0.1)
                blobs[1].copy_(torch.rand(blobs[1].shape, generator=g) + 0.5)
                blobs[2].fill_(1.0)
            elif node.type == "Scale":
                gamma = 0.2 if node.name.endswith("branch2c") else 1.0
                blobs[0].copy_(gamma * (0.8 + 0.4 * torch.rand(blobs[0].shape, generator=g)))
                blobs[1].copy_(torch.randn(blobs[1].shape, generator=g) * 0.05)
            elif node.type == "InnerProduct":
                for b in blobs:
                    b.copy_(torch.randn(b.shape, generator=g) * 0.01)
    net.save(str(path))
    return net


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    d = tmp_path_factory.mktemp("release")
    write_release_caffemodel(d / "ResNet-101-model.caffemodel")
    return d / "ResNet-101-model.caffemodel"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    pack(str(d), n_train=24, n_val=2)
    return d


def demo_solver(name, source, *, crop=32, batch_size=2, iters=20, base_lr=None):
    """``name``'s zoo solver and train net, the data layer reading the demo shapes (``crop``² crops, flips and
    rotations as the zoo's), no test net, no snapshots."""
    net = zoo.net(name, "train")
    net.layer[0].python_param.param_str = repr(dict(source=str(source), batch_size=batch_size, crop=crop,
                                                    mirror=True, rotate=10, seed=1))
    sp = zoo.solver(name)
    for f in ("train_net", "test_net", "test_iter", "test_interval", "snapshot"):
        sp.ClearField(f)
    sp.train_net_param.CopyFrom(net)
    sp.max_iter, sp.iter_size, sp.display = iters, 1, 0
    if base_lr is not None:
        sp.base_lr = base_lr
    return sp


class _Log(logging.Handler):
    """The 'netspec' logger's messages (a CLI run in the same process stops its propagation to the root
    logger, where caplog listens)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        logger = logging.getLogger("netspec")
        self.saved_level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger("netspec")
        logger.removeHandler(self)
        logger.setLevel(self.saved_level)


def _release_blobs(path):
    return {name: [a for a, _ in blobs] for name, _, blobs in upgrade.weight_layers(binary.read_caffemodel(str(path)))
            if blobs}


def _train(sp, weights, iters):
    torch.manual_seed(0)
    solver = Solver(sp)
    solver.net.copy_from(str(weights))  # what tools/train.py --weights does
    losses = []
    for _ in range(iters):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    return solver, losses


@pytest.mark.parametrize("iters", [pytest.param(6, id="6"), pytest.param(20, id="20", marks=pytest.mark.slow)])
def test_head_variant_freezes_the_release_trunk_and_learns_the_head(release, demo, iters):
    src = _release_blobs(release)
    assert set(src) - {"fc1000"} and "fc1000" in src
    sp = demo_solver(HEAD, demo / "train", iters=iters)
    torch.manual_seed(0)
    solver = Solver(sp)
    params = solver.net.params
    trunk = [name for name in params if not name.startswith(("aspp", "bn_aspp", "scale_aspp", "score"))]
    head = [name for name in params if name not in trunk]
    # the trunk is the release's layer for layer: every one of its layers with blobs, fc1000 aside
    assert sorted(trunk) == sorted(set(src) - {"fc1000"})
    with _Log() as log:
        solver.net.copy_from(str(release))
    assert "Ignoring source layer fc1000" in log.messages
    for name in trunk:
        for j, a in enumerate(src[name]):
            np.testing.assert_array_equal(params[name][j].data, a.reshape(params[name][j].data.shape))
    before = {name: [b.data.copy() for b in params[name]] for name in head}
    losses = []
    for _ in range(iters):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    # the trunk (convolutions, frozen BatchNorm statistics, Scale) is exactly the file's after training
    for name in trunk:
        for j, a in enumerate(src[name]):
            np.testing.assert_array_equal(params[name][j].data, a.reshape(params[name][j].data.shape), name)
    # every head blob moved: convolutions and Scale layers learn, BatchNorm statistics accumulate
    for name in head:
        for j, b in enumerate(params[name]):
            assert not np.array_equal(b.data, before[name][j]), (name, j)
    # and the loss falls at the solver's own learning rate (base_lr 0.01)
    assert np.all(np.isfinite(losses))
    k = len(losses) // 4
    assert np.mean(losses[-k:]) < 0.7 * np.mean(losses[:k]), losses


def test_the_full_model_learns_its_trunk(release, demo):
    """``deeplabv3_resnet101_idd`` from the same file: trunk convolutions learn, the frozen BatchNorm and Scale
    layers do not (one iteration; the 20-iteration run is the slow test below)."""
    src = _release_blobs(release)
    solver, losses = _train(demo_solver("deeplabv3_resnet101_idd", demo / "train", iters=1), release, 1)
    params = solver.net.params
    assert not np.array_equal(params["res4b22_branch2b"][0].data, src["res4b22_branch2b"][0])
    assert not np.array_equal(params["conv1"][0].data, src["conv1"][0])
    for name in ("bn4b22_branch2b", "scale4b22_branch2b", "bn_conv1", "scale5c_branch2c"):
        for j, a in enumerate(src[name]):
            np.testing.assert_array_equal(params[name][j].data, a.reshape(params[name][j].data.shape), name)
    assert np.all(np.isfinite(losses))


@pytest.mark.slow
def test_full_model_loss_falls_over_20_iterations(release, demo):
    _, losses = _train(demo_solver("deeplabv3_resnet101_idd", demo / "train", crop=64), release, 20)
    assert np.all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


@pytest.mark.slow
def test_the_documented_command(release, demo, tmp_path):
    """``tools/train.py --solver solvers/deeplabv3_resnet101_idd_head.prototxt --weights ...`` as committed:
    513×513 crops of batches of 4 (the demo's 64×64 shapes padded with ignored pixels), one update (iter_size 2:
    two forward/backward passes). About 10 minutes on 2 CPU cores: dilated convolutions are slow there."""
    (tmp_path / "prototxt").mkdir()
    shutil.copytree(ROOT / "prototxt" / HEAD, tmp_path / "prototxt" / HEAD)
    (tmp_path / "solvers").mkdir()
    shutil.copy(ROOT / "solvers" / f"{HEAD}.prototxt", tmp_path / "solvers")
    (tmp_path / "data").mkdir()
    shutil.copytree(demo, tmp_path / "data" / "idd")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), "--solver", f"solvers/{HEAD}.prototxt",
                        "--weights", str(release), "--max-iter", "1"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=1200, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Ignoring source layer fc1000" in r.stderr and "Optimization Done." in r.stderr
    snap = tmp_path / "snapshots" / HEAD / "train_iter_1.caffemodel"
    trained = _release_blobs(snap)
    src = _release_blobs(release)
    for name in ("conv1", "res3b2_branch2b", "bn4b7_branch2a", "scale5c_branch2c"):
        for a, b in zip(trained[name], src[name]):
            np.testing.assert_array_equal(a.reshape(b.shape), b)


def test_loading_reports_every_layer_left_without_weights_and_strict_refuses(tmp_path, caplog):
    import logging
    import netspec
    from netspec.errors import WeightsError
    from google.protobuf import text_format
    from netspec.proto import caffe_pb2
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }\n'
            'layer { name: "a" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }\n'
            'layer { name: "b" type: "InnerProduct" bottom: "y" top: "z" inner_product_param { num_output: 2 } }\n')
    net = netspec.Net(text_format.Parse(text, caffe_pb2.NetParameter()), netspec.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    renamed = text_format.Parse(text.replace('name: "b"', 'name: "b_new"'), caffe_pb2.NetParameter())
    with caplog.at_level(logging.INFO, logger="netspec"):
        netspec.Net(renamed, netspec.TEST, weights=str(tmp_path / "w.caffemodel"))
    assert "Layer 'b_new' (InnerProduct) got no weights from" in caplog.text
    assert "Loaded weights for 1 of 2 layers with parameters" in caplog.text
    with pytest.raises(WeightsError, match=r"1 of 2 layers with parameters got no weights \(strict\): b_new"):
        netspec.Net(renamed, netspec.TEST, weights=str(tmp_path / "w.caffemodel"), strict=True)
    other = text_format.Parse(text.replace('name: "a"', 'name: "p"').replace('name: "b"', 'name: "q"'),
                              caffe_pb2.NetParameter())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="netspec"):
        netspec.Net(other, netspec.TEST, weights=str(tmp_path / "w.caffemodel"))
    assert "Loaded weights for 0 of 2 layers" in caplog.text and "another net" in caplog.text
    for bad, words in ((tmp_path / "typo.caffemodel", "weights file not found"), (tmp_path, "is a directory")):
        with pytest.raises(WeightsError, match=words):
            netspec.Net(renamed, netspec.TEST, weights=str(bad))
