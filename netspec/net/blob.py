"""pycaffe's Blob: ``.data`` and ``.diff`` as writable numpy arrays over torch storage."""
import math

import numpy as np
import torch


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.device.type != "cpu" or not t.is_contiguous() or t.dtype != torch.float32:
        t = t.to("cpu", torch.float32).contiguous()
    return t.numpy()


class Blob:
    """A named N-D array pair as pycaffe exposes it. A scalar loss has ``shape == ()``."""

    def __init__(self, shape=(), data: torch.Tensor = None):
        self._t = data.detach() if data is not None else None
        self._shape = tuple(shape) if data is None else tuple(data.shape)
        self._diff = None

    @property
    def _data(self) -> torch.Tensor:
        if self._t is None:  # allocated on first use: a built net holds no activation memory until it runs
            self._t = torch.zeros(self._shape)
        return self._t

    @_data.setter
    def _data(self, t: torch.Tensor):
        self._t = t
        self._shape = tuple(t.shape)

    @property
    def data(self) -> np.ndarray:
        return _np(self._data)

    @data.setter
    def data(self, value):
        self.data[...] = value

    #: ``_diff`` is a gradient autograd also handed to another blob (a sum's bottoms get the sum's gradient), an
    #: expanded one, or one on another device or in another dtype: this blob's own dense CPU float32 copy is made
    #: when its diff is first asked for, not by every backward.
    _diff_lent = False

    @property
    def diff(self) -> np.ndarray:
        d = self._diff
        if d is None or tuple(d.shape) != self.shape:
            d = self._diff = torch.zeros(self.shape)
            self._diff_lent = False
        elif self._diff_lent:
            d = self._diff = d.to("cpu", torch.float32, copy=True, memory_format=torch.contiguous_format)
            self._diff_lent = False
        return _np(d)

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    @property
    def shape(self):
        return self._shape if self._t is None else tuple(self._t.shape)

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def _legacy(self, i):
        s = self.shape
        return s[i] if len(s) > i else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if shape != self.shape:
            self._t = None
            self._shape = shape
            self._diff = None
            self._diff_lent = False

    def _set(self, tensor: torch.Tensor):
        self._t = tensor.detach()  # (the shape is the tensor's while it is held)

    def __repr__(self):
        return f"Blob(shape={self.shape})"


#: Bumped whenever a ParamBlob hands out a numpy view of its parameter: writes through such a view change the
#: parameter without torch's version counter seeing it, so caches of derived weights (netspec.net.fold) also key on this.
numpy_views = [0]


_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _holders(t: torch.Tensor) -> int:
    """How many tensors (and arrays over them) hold ``t``'s memory, as a count comparable with ``_ALONE``."""
    s = t.untyped_storage()
    return _use_count(s._cdata)


_ALONE = _holders(torch.empty(1)) if _use_count else None  # a tensor that nothing else holds


def clear_diff(param: torch.Tensor) -> None:
    """Caffe's ClearParamDiffs for one parameter. A diff whose memory nothing else holds (no array taken from
    ``.diff``, no view of it alive) is let go instead of zeroed: it reads as zeros, and the next backward hands
    its gradient over instead of adding it into zeroed memory (no memset, no add, fewer page faults). A diff
    that is held is zeroed in place, so the arrays over it see the zeros, as in Caffe."""
    g = param.grad
    if g is None:
        return
    if _ALONE is not None and _holders(g) <= _ALONE:
        param.grad = None
    else:
        g.zero_()


class ParamBlob(Blob):
    """A view of a learnable ``nn.Parameter``: writing ``.data`` writes the parameter, ``.diff`` its grad."""

    def __init__(self, param: torch.nn.Parameter):
        self._param = param

    @property
    def _data(self):
        return self._param.data

    @property
    def shape(self):
        return tuple(self._param.shape)

    @property
    def data(self) -> np.ndarray:
        numpy_views[0] += 1
        return _np(self._param.data)

    @data.setter
    def data(self, value):
        with torch.no_grad():
            self._param.copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)).reshape(self._param.shape))

    @property
    def diff(self) -> np.ndarray:
        if self._param.grad is None:
            self._param.grad = torch.zeros_like(self._param)
        return _np(self._param.grad)

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    def reshape(self, *shape):
        raise ValueError("param blobs keep the shape the layer gave them")
