"""Importing this package registers every layer builder (one module per layer family)."""
from . import python  # noqa: F401
