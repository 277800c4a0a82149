"""The released PSPNet, SegNet / Bayesian SegNet and ENet prototxts (tests/data/forks/{pspnet,segnet,enet}, see
their SOURCES.md) build and run as released; big ones at a small input, with the sizes the nets hard-code
(PSPNet's pyramid pooling kernels and Interp sizes, SegNet's upsample_h / upsample_w) scaled to it."""
import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netspec
from netspec.passes import dialects
from netspec.net.pycaffe import Net
from netspec.proto import caffe_pb2

FORKS = Path(__file__).parent / "data" / "forks"
PSPNET = {"pspnet50_ADE20K_473": (473, 60, 150), "pspnet101_VOC2012_473": (473, 60, 21),
          "pspnet101_cityscapes_713": (713, 90, 19)}  # input, pyramid feature size, classes
SEGNET = ["segnet_basic_train", "segnet_basic_inference", "bayesian_segnet_basic_train",
          "bayesian_segnet_basic_inference", "segnet_train", "segnet_inference", "bayesian_segnet_train",
          "bayesian_segnet_inference"]
ENET = ["enet_deploy.prototxt.gz", "enet_deploy_final.prototxt", "enet_train_encoder.prototxt.gz",
        "enet_train_encoder_decoder.prototxt.gz"]


def load(rel):
    path = FORKS / rel
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return text_format.Parse(f.read(), caffe_pb2.NetParameter())


def pairs(tmp_path, h, w, classes, n=4, same=False):
    """A DenseImageData list of ``n`` random image / label pairs (labels < classes)."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        k = 0 if same else i
        if not same or i == 0:
            cv2.imwrite(str(tmp_path / f"i{k}.png"), rng.integers(0, 256, (h, w, 3)).astype(np.uint8))
            cv2.imwrite(str(tmp_path / f"l{k}.png"), rng.integers(0, classes, (h, w)).astype(np.uint8))
        lines.append(f"{tmp_path}/i{k}.png {tmp_path}/l{k}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "list.txt")


def run(param, phase, seed=0):
    torch.manual_seed(seed)
    net = Net(param, phase)
    rng = np.random.default_rng(seed)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].shape)
    out = net.forward()
    for k, v in out.items():
        assert np.all(np.isfinite(v)), k
    if phase == netspec.TRAIN:
        net.backward()
        assert any(np.any(p.diff) for ps in net.params.values() for p in ps)
    return net, out


# -- dialects ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rel,dialect", [(f"pspnet/{n}.prototxt.gz", "pspnet") for n in PSPNET]
                         + [(f"segnet/{n}.prototxt", "segnet") for n in SEGNET]
                         + [(f"enet/{n}", "enet") for n in ENET if "final" not in n]
                         + [("enet/enet_deploy_final.prototxt", "segnet")])  # no spatial dropout left: SegNet's BN
def test_detects_the_fork(rel, dialect):
    name, reason = dialects.detect(load(rel))
    assert name == dialect and reason


def test_detects_bvlc_and_nothing():
    assert dialects.detect(text_format.Parse(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
        'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }', caffe_pb2.NetParameter()))[0] == "bvlc"
    assert dialects.detect(caffe_pb2.NetParameter()) is None


# -- PSPNet ------------------------------------------------------------------------------------------------
def psp_small(param, feat, new_feat=6, size=41):
    """The net at size x size: pyramid pooling kernels feat/bins -> new_feat/bins, Interp feat -> new_feat
    (41 gives a 6x6 feature map as 473 gives 60x60 and 713 90x90; conv6_interp's zoom 8 gives 41 back)."""
    param.input_dim[2] = param.input_dim[3] = size
    for lp in param.layer:
        q = lp.pooling_param
        if lp.type == "Pooling" and q.pool == q.AVE and q.kernel_size == q.stride and feat % q.kernel_size == 0:
            q.kernel_size = q.stride = new_feat // (feat // q.kernel_size)
        if lp.type == "Interp" and lp.interp_param.height == feat:
            lp.interp_param.height = lp.interp_param.width = new_feat
    return param


def _pspnet_small(name):
    size, feat, classes = PSPNET[name]
    net, out = run(psp_small(load(f"pspnet/{name}.prototxt.gz"), feat), netspec.TEST)
    assert out["conv6_interp"].shape == (1, classes, 41, 41)
    assert all("frozen=True" in repr(m) for m in net.module.modules() if type(m).__name__ == "PSPNetBN")


def test_pspnet50_ade20k_small_input():
    _pspnet_small("pspnet50_ADE20K_473")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pspnet101_VOC2012_473", "pspnet101_cityscapes_713"])
def test_pspnet101_small_input(name):
    _pspnet_small(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PSPNET))
def test_pspnet_builds_at_the_released_size(name):
    size, feat, classes = PSPNET[name]
    net = Net(load(f"pspnet/{name}.prototxt.gz"), netspec.TEST)
    assert net.blobs["conv6_interp"].shape == (1, classes, size, size)
    assert net.blobs["conv5_3_concat"].shape[2:] == (feat, feat)


@pytest.mark.slow
def test_pspnet50_forward_at_the_released_size():  # about 25 s on 2 CPU cores
    _, out = run(load("pspnet/pspnet50_ADE20K_473.prototxt.gz"), netspec.TEST)
    assert out["conv6_interp"].shape == (1, 150, 473, 473)


# -- SegNet / Bayesian SegNet ------------------------------------------------------------------------------
def segnet_small(param, source, h=40, w=48):
    """Sources -> ``source``; upsample_h / upsample_w (set for 360 x 480 inputs) -> the same depth at h x w."""
    def chain(n):
        out = [n]
        for _ in range(5):
            out.append(-(-out[-1] // 2))  # 2x2 stride-2 pooling, Caffe's ceil
        return out
    mh, mw = dict(zip(chain(360), chain(h))), dict(zip(chain(480), chain(w)))
    for lp in param.layer:
        if lp.type == "DenseImageData":
            lp.dense_image_data_param.source = source
        u = lp.upsample_param
        if lp.type == "Upsample" and u.HasField("upsample_h"):
            u.upsample_h, u.upsample_w = mh[u.upsample_h], mw[u.upsample_w]
    return param


def _segnet(name, tmp_path):
    param = segnet_small(load(f"segnet/{name}.prototxt"), pairs(tmp_path, 40, 48, 11))
    phase = netspec.TRAIN if "train" in name else netspec.TEST
    net, out = run(param, phase)
    batch = net.blobs["data"].shape[0]
    if phase == netspec.TRAIN:
        assert np.isfinite(out["loss"]) and out["per_class_accuracy"].shape == (11, 1, 1, 1)  # SegNet's shape
    else:
        assert out["prob"].shape == (batch, 11, 40, 48)
        np.testing.assert_allclose(out["prob"].sum(1), 1, rtol=1e-5)


@pytest.mark.parametrize("name", ["segnet_basic_train", "segnet_basic_inference", "segnet_inference"])
def test_segnet_released(name, tmp_path):
    """segnet_basic_* run unchanged but for the source (their sizes follow the 40 x 48 images)."""
    _segnet(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SEGNET if n not in ("segnet_basic_train", "segnet_basic_inference",
                                                                 "segnet_inference")])
def test_segnet_released_slow(name, tmp_path):
    _segnet(name, tmp_path)


def test_bayesian_segnet_monte_carlo_samples(tmp_path):
    """bayesian_segnet_basic_inference: the batch (8) holds one image 8 times; dropout stays on in TEST
    (sample_weights_test), so the 8 softmax outputs are 8 different samples."""
    param = segnet_small(load("segnet/bayesian_segnet_basic_inference.prototxt"),
                         pairs(tmp_path, 40, 48, 11, n=8, same=True))
    net, out = run(param, netspec.TEST)
    prob = out["prob"]
    np.testing.assert_array_equal(net.blobs["data"].data[0], net.blobs["data"].data[7])
    assert not np.allclose(prob[0], prob[1])
    mean, var = prob.mean(0), prob.var(0)  # Bayesian SegNet's prediction and its uncertainty
    assert mean.shape == (11, 40, 48) and np.all(var >= 0) and var.max() > 0


# -- ENet --------------------------------------------------------------------------------------------------
def enet_small(param, source=None, h=32, w=64):
    for lp in param.layer:
        if lp.type == "Input":
            lp.input_param.shape[0].dim[2:] = [h, w]
        if lp.type == "DenseImageData":
            q = lp.dense_image_data_param
            q.source, q.new_height, q.new_width = source, h, w
    return param


@pytest.mark.parametrize("name", ["enet_deploy.prototxt.gz", "enet_deploy_final.prototxt"])
def test_enet_deploy(name):
    _, out = run(enet_small(load(f"enet/{name}")), netspec.TEST)
    assert out["deconv6_0_0"].shape == (1, 19, 32, 64)


@pytest.mark.slow
@pytest.mark.parametrize("name,label", [("enet_train_encoder.prototxt.gz", (4, 8)),   # label_divide_factor 8
                                        ("enet_train_encoder_decoder.prototxt.gz", (32, 64))])
def test_enet_train(name, label, tmp_path):
    net, out = run(enet_small(load(f"enet/{name}"), pairs(tmp_path, 40, 72, 19)), netspec.TRAIN)
    assert net.blobs["label"].shape[2:] == label and np.isfinite(out["loss"])
