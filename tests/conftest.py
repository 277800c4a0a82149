"""Shared pytest fixtures.

- ``shared_dir``: ``../shared`` (reference data); skips the test when absent.
- ``netspec_log``: the messages the 'netspec' logger emits during the test.
- ``tiny_net_text``: ``tiny_net_text(loss=False, batch=2, size=8)`` gives the prototxt text of one shared tiny
  net, for tests where the exact net does not matter: Input "data" (batch x 3 x size x size) -> Convolution
  "conv1" (4 outputs, 3x3, pad 1, gaussian weights, constant bias) -> in-place ReLU "relu1" -> MAX Pooling
  "pool1" (2x2, stride 2) -> InnerProduct "fc" (3 outputs); with ``loss=True`` the Input also gives "label"
  (batch) and SoftmaxWithLoss "loss" follows. A test whose assertions name layers or shapes writes its own net.
"""

import logging
from pathlib import Path

import pytest

#: ``../shared`` beside the project: reference data every developer and CI run has (absent in a
#: user's fresh clone, where tests that need it skip).
SHARED_DIR = Path(__file__).resolve().parents[1] / ".." / "shared"


@pytest.fixture(scope="session")
def shared_dir():
    """Path of ``../shared``; skips the test when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip("../shared (reference data) is not present")
    return SHARED_DIR.resolve()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def _netspec_logger_restored():
    """Every test leaves the 'netspec' logger as it found it: the tools' setup_logging adds a handler on the
    stream of the moment and stops propagation, which would otherwise outlive the test (and hide records from
    caplog in later tests)."""
    logger = logging.getLogger("netspec")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def netspec_log():
    """The messages the 'netspec' logger emits during the test."""
    h = _Collect()
    logging.getLogger("netspec").addHandler(h)
    return h.messages


def _tiny_net_text(loss=False, batch=2, size=8):
    label = ' top: "label"' if loss else ""
    label_shape = f" shape {{ dim: {batch} }}" if loss else ""
    text = f"""name: "tiny"
layer {{ name: "data" type: "Input" top: "data"{label}
        input_param {{ shape {{ dim: {batch} dim: 3 dim: {size} dim: {size} }}{label_shape} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 0.1 }}
                            bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
"""
    if loss:
        text += 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n'
    return text


@pytest.fixture(scope="session")
def tiny_net_text():
    """``tiny_net_text(loss=False, batch=2, size=8)``: the shared tiny net's prototxt (module docstring)."""
    return _tiny_net_text

