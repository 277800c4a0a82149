"""Shared pytest fixtures."""

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
