"""Shared pytest fixtures."""

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
