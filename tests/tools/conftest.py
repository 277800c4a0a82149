"""Fixtures of the tool tests: a tiny demo dataset with random demo-net weights."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "prototxt", "demo")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A directory with data/demo (8 train, 4 val 64x64 samples) and demo.caffemodel (random weights, seeded).
    Tests chdir into it: the demo prototxts read data/demo/{train,val} relative to the working directory."""
    import torch

    import netspec
    from netspec.data.synthetic import pack
    d = tmp_path_factory.mktemp("demo")
    pack(str(d / "data" / "demo"), n_train=8, n_val=4)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        torch.manual_seed(0)
        net = netspec.Net(os.path.join(DEMO, "val.prototxt"), netspec.TEST)
        net.save(str(d / "demo.caffemodel"))
    finally:
        os.chdir(cwd)
    return d


@pytest.fixture
def in_demo(demo_dir, monkeypatch):
    monkeypatch.chdir(demo_dir)
    return demo_dir
