"""The persistent compile cache of frozen inference (netspec.net.compile_cache): a package compiled ahead of time
(torch.export + AOTInductor) on the first run is loaded, not traced, by the next; its key follows the net, the
weights, the input shapes, the layout and the precision; a net that cannot be exported falls back to
torch.compile with one warning."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import netspec
from netspec.net import compile_cache

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "prototxt", "demo",
                      "deploy.prototxt")


def _net(seed=0):
    torch.manual_seed(0)
    net = netspec.Net(DEPLOY, netspec.TEST)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = np.random.RandomState(b.data.size % 97 + seed).randn(*b.data.shape) * 0.1
    return net


def _scores(net, x):
    net.blobs["data"].reshape(*x.shape)
    net.blobs["data"].data[...] = x
    return net.forward_only()["score"].copy()


def _x(shape=(1, 3, 64, 64)):
    return np.random.RandomState(1).randn(*shape).astype(np.float32) * 50


def _path(net, shape=(1, 3, 64, 64), **configure):
    net.configure(compile=True, freeze=True, cache_dir="/nonexistent", **configure)
    x = torch.zeros(shape)
    if net._channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return net._aot.path_for({"data": x})


def test_the_key_follows_net_weights_shapes_layout_and_precision():
    base = _path(_net())
    assert base == _path(_net()), "the same net, weights and inputs: the same package"
    assert base.parent == Path("/nonexistent") and base.suffix == ".pt2" and base.name.startswith("net-")  # (the demo net has no name)
    others = [_path(_net(seed=1)), _path(_net(), shape=(2, 3, 64, 64)), _path(_net(), shape=(1, 3, 48, 80)),
              _path(_net(), channels_last=True), _path(_net(), precision="bf16")]
    assert len({base, *others}) == 1 + len(others), "weights, shape, layout and precision each change the key"


def test_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("NETSPEC_CACHE_DIR", str(tmp_path))
    assert compile_cache.default_dir() == tmp_path / "compiled"
    monkeypatch.delenv("NETSPEC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_dir() == tmp_path / "xdg" / "netspec" / "compiled"


def test_cache_dir_false_keeps_torch_compile_only(tmp_path):
    net = _net()
    net.configure(compile=True, freeze=True, cache_dir=False)
    assert net._aot is None


def test_export_failure_falls_back_to_torch_compile(tmp_path, monkeypatch, netspec_log):
    def refuse(*a, **k):
        raise RuntimeError("no export today\nsecond line")
    monkeypatch.setattr(torch.export, "export", refuse)
    eager, fast = _net(), _net()
    fast.configure(compile=True, freeze=True, cache_dir=tmp_path)
    x = _x()
    np.testing.assert_allclose(_scores(fast, x), _scores(eager, x), rtol=1e-4, atol=1e-4)
    warned = [m for m in netspec_log if "using torch.compile" in m]
    assert warned == ["frozen inference: no ahead-of-time compiled package (RuntimeError: no export today); "
                      "using torch.compile"]
    assert not list(tmp_path.rglob("*"))
    _scores(fast, x)
    assert len([m for m in netspec_log if "using torch.compile" in m]) == 1, "warned once"


def test_second_run_loads_the_package_and_matches_eager(tmp_path):
    """One compile (~20 s on a 2-core CPU): the first net compiles and stores, a second net built afresh (as in a
    new process) loads the package; both give the eager scores to 1e-5. A damaged package is compiled again."""
    eager, first = _net(), _net()
    first.configure(compile=True, freeze=True, cache_dir=tmp_path)
    x = _x()
    want = _scores(eager, x)
    np.testing.assert_allclose(_scores(first, x), want, rtol=1e-5, atol=1e-5)
    assert first._aot.last_event == "compiled"
    packages = list(tmp_path.glob("*.pt2"))
    assert packages == [first._aot.last_path], "one package, no temporary left beside it"
    second = _net()
    second.configure(compile=True, freeze=True, cache_dir=tmp_path)
    np.testing.assert_allclose(_scores(second, x), want, rtol=1e-5, atol=1e-5)
    assert second._aot.last_event == "hit"
    assert second._compiled is not None and second._aot.failed is None
