"""Typed errors. Every error a user can trigger with a bad file derives from NetspecError.

Messages follow one form: ``<file>:<line>: layer '<name>' (<Type>): <what is wrong>; <hint>``.
"""


class NetspecError(Exception):
    """Base class for every error netspec raises on bad input."""


class PrototxtError(NetspecError, ValueError):
    """A text-format net or solver file could not be parsed or is inconsistent."""


class FormatError(NetspecError, ValueError):
    """A binary Caffe file (.caffemodel, .solverstate, .binaryproto, Datum) is malformed."""


class LayerError(NetspecError, ValueError):
    """A layer cannot be built or run with the given parameters and bottom shapes."""


class UnknownLayerError(LayerError, KeyError):
    """A layer type that no builder is registered for."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class WeightsError(NetspecError, ValueError):
    """Weights do not fit the net (shape mismatch, missing layer)."""


class SolverError(NetspecError, ValueError):
    """A solver definition or solver state cannot be used."""


class DataError(NetspecError, ValueError):
    """A dataset (LMDB, list file, image) is missing, corrupt or inconsistent."""
