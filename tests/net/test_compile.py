"""Net.configure(compile=True, freeze=True): compiled inference with the weights folded in gives the eager
net's scores (tools/infer.py --compile runs this path)."""
import os

import numpy as np
import pytest
import torch

import netspec
from netspec.errors import NetspecError

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "prototxt", "demo",
                      "deploy.prototxt")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Compiled packages (netspec.net.compile_cache) go to the test's folder, never to ~/.cache."""
    monkeypatch.setenv("NETSPEC_CACHE_DIR", str(tmp_path / "cache"))


def _net():
    torch.manual_seed(0)
    net = netspec.Net(DEPLOY, netspec.TEST)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = np.random.RandomState(b.data.size % 97).randn(*b.data.shape) * 0.1
    return net


def _scores(net, x):
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    return net.forward_only()["score"].copy()


@pytest.mark.parametrize("shapes", [
    # (the default run compiles the demo net once, in test_compile_cache's compile-then-load test, which checks
    # the same equality to 1e-5)
    pytest.param([(1, 3, 64, 64)], marks=pytest.mark.slow, id="one-size"),
    pytest.param([(1, 3, 64, 64), (1, 3, 48, 80)], marks=pytest.mark.slow, id="recompile-for-a-new-size")])
def test_frozen_compiled_inference_equals_eager(shapes):
    eager, fast = _net(), _net()
    fast.configure(compile=True, freeze=True)
    for shape in shapes:
        x = np.random.RandomState(1).randn(*shape).astype(np.float32) * 50
        np.testing.assert_allclose(_scores(fast, x), _scores(eager, x), rtol=1e-4, atol=1e-4)


def test_freeze_needs_compile():
    with pytest.raises(NetspecError, match="freeze=True needs compile=True"):
        _net().configure(freeze=True)
