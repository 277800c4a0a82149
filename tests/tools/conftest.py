"""Fixtures of the tool tests: a tiny demo dataset with random demo-net weights, and a log collector."""
import logging
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


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def netspec_log():
    """The messages the 'netspec' logger emits during the test; its handlers, level and propagation are put
    back afterwards (the tools call setup_logging, which would otherwise outlive the test)."""
    logger = logging.getLogger("netspec")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    h = _Collect()
    logger.addHandler(h)
    yield h.messages
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
