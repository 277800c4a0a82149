"""tools/compute_bn_statistics.py (SegNet-Tutorial's Scripts/compute_bn_statistics.py): on the released
segnet_basic_train.prototxt with synthetic pairs, the folded INFERENCE net reproduces the LEARN net."""
import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import netspec
from netspec.errors import NetspecError
from netspec.net.pycaffe import Net
from netspec.formats.prototxt import read_net, to_text

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("compute_bn_statistics", ROOT / "tools" / "compute_bn_statistics.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


@pytest.fixture
def segnet_basic(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"i{i}.png"), rng.integers(0, 256, (40, 48, 3)).astype(np.uint8))
        cv2.imwrite(str(tmp_path / f"l{i}.png"), rng.integers(0, 11, (40, 48)).astype(np.uint8))
        lines.append(f"{tmp_path}/i{i}.png {tmp_path}/l{i}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    net = read_net(str(ROOT / "tests/data/forks/segnet/segnet_basic_train.prototxt"))
    p = net.layer[0].dense_image_data_param
    p.source, p.shuffle = str(tmp_path / "list.txt"), False
    (tmp_path / "train.prototxt").write_text(to_text(net))
    torch.manual_seed(0)
    trained = Net(str(tmp_path / "train.prototxt"), netspec.TEST)
    rng = np.random.default_rng(1)
    for name, blobs in trained.params.items():
        if name.endswith("_bn"):  # a trained-looking scale and shift
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].shape)
            blobs[1].data[...] = rng.uniform(-0.5, 0.5, blobs[1].shape)
    trained.save(str(tmp_path / "trained.caffemodel"))
    return tmp_path


def test_folded_inference_net_reproduces_the_learn_net(segnet_basic):
    d = segnet_basic
    assert tool.main([str(d / "train.prototxt"), str(d / "trained.caffemodel"), str(d / "out"),
                      "--iterations", "1"]) == 0
    infer = Net(str(d / "out" / "inference.prototxt"), str(d / "out" / "inference.caffemodel"), netspec.TEST)
    assert [l.bn_param.bn_mode for l in infer.net_param.layer if l.type == "BN"] == [1] * 8  # INFERENCE
    assert infer.blobs["data"].shape == (1, 3, 40, 48) and "prob" in infer.outputs
    # the folding, layer by layer: gamma / sqrt(var * m/(m-1) + 1e-9), beta - gamma * mean / sqrt(...)
    stats_net, stats = tool.testable(read_net(str(d / "train.prototxt")))
    learn = Net(stats_net, str(d / "trained.caffemodel"), netspec.TEST)
    learn.forward()  # the one batch (all 4 images) the tool averaged over
    for name, top, mean_top, var_top in stats:
        mean, var = learn.blobs[mean_top].data.ravel(), learn.blobs[var_top].data.ravel()
        m = learn.blobs[top].data.size // mean.size
        gamma, beta = (b.data.ravel() for b in learn.params[name])
        std = np.sqrt(var * m / (m - 1) + 1e-9)
        np.testing.assert_allclose(infer.params[name][0].data.ravel(), gamma / std, rtol=1e-5)
        np.testing.assert_allclose(infer.params[name][1].data.ravel(), beta - gamma * mean / std, rtol=1e-4,
                                   atol=1e-6)
    # end to end: the INFERENCE net on each image ~ the LEARN net's softmax (the unbiased variance differs
    # most at the 3x3 bottleneck, m = 36 there)
    score = learn.blobs["conv_classifier"].data
    want = np.exp(score - score.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    for k in range(4):
        got = infer.forward(data=learn.blobs["data"].data[k:k + 1])["prob"][0]
        assert np.abs(got - want[k]).mean() < 5e-3 and (got.argmax(0) == want[k].argmax(0)).mean() > 0.95


def test_refuses_pspnet_bn(tmp_path):
    (tmp_path / "n.prototxt").write_text(
        'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }\n'
        'layer { name: "bn" type: "BN" bottom: "data" top: "y" bn_param { frozen: true } }\n')
    with pytest.raises(NetspecError, match="PSPNet BN"):
        tool.compute(str(tmp_path / "n.prototxt"), None, str(tmp_path / "o"))
