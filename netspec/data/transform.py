"""Caffe's ``DataTransformer`` (TransformationParameter), element for element.

For every output pixel, in float32 as Caffe's ``Dtype``::

    top[c, h, w'] = (x[c, h_off + h, w_off + w] - mean[c, h_off + h, w_off + w]) * scale   # mean_file
    top[c, h, w'] = (x[c, h_off + h, w_off + w] - mean_value[c]) * scale                   # mean_value
    top[c, h, w'] =  x[c, h_off + h, w_off + w] * scale                                     # neither

with ``w' = W_out - 1 - w`` when mirrored. The mean is subtracted BEFORE scaling; a mean file has the
uncropped image size and is cropped with the image; one ``mean_value`` applies to every channel.

* ``crop_size``: TRAIN phase draws ``h_off, w_off`` uniformly in ``[0, H - crop]``; TEST takes the centre
  ``((H - crop) / 2, (W - crop) / 2)`` (integer division).
* ``mirror``: a random horizontal flip with probability 1/2 in **both** phases: Caffe's
  ``param_.mirror() && Rand(2)`` does not look at the phase (prototxts usually set ``mirror`` in the TRAIN
  layer only).
* Random draws come from a generator seeded once from torch's global RNG (``netspec.set_random_seed``), and
  only when the transformer needs randomness, as Caffe's ``InitRand``; the order of draws per image is
  Caffe's (mirror, then h_off, then w_off). Data layers pass ``rng=transformer.batch_rng(k)`` instead: a
  generator seeded with (seed, batch index ``k``), so a batch's crops and flips do not depend on which
  loader worker builds it.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from ..proto import caffe_pb2
from .datum import decode_datum, key_str, parse_datum
from .shard import Shard

log = logging.getLogger("netspec")

__all__ = ["DataTransformer", "read_mean_file", "FCN_MEAN"]

#: The BGR pixel mean of the FCN releases (ILSVRC's, as VGG16 was trained with), subtracted by their data layers,
#: score.py and infer.py.
FCN_MEAN = (104.00699, 116.66877, 122.67892)


def read_mean_file(path) -> np.ndarray:
    """A mean ``.binaryproto`` (Caffe's ``compute_image_mean`` output) as a C x H x W float32 array."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"mean_file '{path}' not found (working directory {os.getcwd()}); Caffe resolves "
                        "relative paths against the working directory")
    from ..formats.binary import read_blobproto
    try:
        arr = read_blobproto(path)
    except DataError:
        raise
    except Exception as e:  # FormatError and friends: say it is the mean file
        raise DataError(f"mean_file '{path}': {e}") from None
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            log.warning("mean_file '%s' has num=%d; using the first item as Caffe does", path, arr.shape[0])
        arr = arr[0]
    elif arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(f"mean_file '{path}' holds a blob of shape {arr.shape}; expected 1 x C x H x W")
    return np.ascontiguousarray(arr)


class DataTransformer:
    """Caffe's DataTransformer for one layer.

    ``mean_path`` overrides where ``param.mean_file`` is read from (the layer resolves relative paths).
    ``seed`` fixes the random crop/mirror stream (default: drawn from torch's global RNG when needed).
    """

    def __init__(self, param: Optional["caffe_pb2.TransformationParameter"] = None, phase: int = caffe_pb2.TEST,
                 *, mean_path=None, seed: Optional[int] = None):
        param = param if param is not None else caffe_pb2.TransformationParameter()
        self.phase = phase  # (the message itself is not kept: it must stay picklable)
        self.scale = np.float32(param.scale)
        self.mirror = bool(param.mirror)
        self.crop_size = int(param.crop_size)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise DataError("transform_param: cannot set both force_color and force_gray")
        if param.HasField("mean_file") and len(param.mean_value):
            raise DataError("transform_param: cannot specify mean_file and mean_value at the same time")
        self.mean: Optional[np.ndarray] = None
        if param.HasField("mean_file"):
            self.mean = read_mean_file(mean_path if mean_path is not None else param.mean_file)
        self.mean_values = np.asarray(list(param.mean_value), dtype=np.float32)
        self.needs_rand = self.mirror or (phase == caffe_pb2.TRAIN and self.crop_size > 0)
        self._rng = None
        self.seed: Optional[int] = None
        if self.needs_rand:
            if seed is None:
                import torch
                seed = int(torch.randint(0, 2 ** 62, (1,)).item())
            self.seed = int(seed)
            self._rng = np.random.default_rng(self.seed)
        self._warned_force = False

    # -- random state (picklable) ---------------------------------------------------------------------------
    def get_state(self):
        return None if self._rng is None else self._rng.bit_generator.state

    def set_state(self, state):
        if state is not None and self._rng is not None:
            self._rng.bit_generator.state = state

    def batch_rng(self, index: int, shard: Shard = Shard()) -> Optional[np.random.Generator]:
        """The generator for batch ``index`` of this process's data-parallel ``shard``: seeded with
        ``shard.rng_key(seed, index)`` (see :mod:`netspec.data.shard`); None without randomness."""
        if self.seed is None:
            return None
        return np.random.default_rng(shard.rng_key(self.seed, index))

    # -- decoding ------------------------------------------------------------------------------------------
    def datum_array(self, value, key=None) -> np.ndarray:
        """The C x H x W array of a serialized Datum, decoded with this transformer's force_color/force_gray."""
        d = parse_datum(value, key)
        if not d.encoded and (self.force_color or self.force_gray) and not self._warned_force:
            log.error("force_color and force_gray only for encoded datum")
            self._warned_force = True
        return decode_datum(d, key, self.force_color, self.force_gray)

    # -- shapes --------------------------------------------------------------------------------------------
    def infer_shape(self, shape: Sequence[int]) -> Tuple[int, int, int]:
        """Output C x H x W for an input C x H x W (Caffe's InferBlobShape, without the leading 1)."""
        c, h, w = shape
        if self.crop_size:
            return c, self.crop_size, self.crop_size
        return c, h, w

    # -- the transform -------------------------------------------------------------------------------------
    def __call__(self, x: np.ndarray, key=None, out: Optional[np.ndarray] = None,
                 rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """Transform one C x H x W array (uint8 pixels or float32 float_data) into float32 C x h x w.

        ``rng`` (default: this transformer's own stream) gives the mirror and crop draws."""
        if x.ndim != 3:
            raise DataError(f"{self._where(key)}expected a C x H x W array, got shape {x.shape}")
        c, height, width = x.shape
        crop = self.crop_size
        rng = rng if rng is not None else self._rng
        do_mirror = self.mirror and int(rng.integers(2)) == 1
        if c <= 0:
            raise DataError(f"{self._where(key)}image has no channels")
        if height < crop or width < crop:
            raise DataError(f"{self._where(key)}image is {height}x{width}, smaller than crop_size {crop}")
        h_off = w_off = 0
        oh, ow = height, width
        if crop:
            oh = ow = crop
            if self.phase == caffe_pb2.TRAIN:
                h_off = int(rng.integers(height - crop + 1))
                w_off = int(rng.integers(width - crop + 1))
            else:
                h_off = (height - crop) // 2
                w_off = (width - crop) // 2
        mean = None
        if self.mean is not None:
            if self.mean.shape != x.shape:
                raise DataError(
                    f"{self._where(key)}image is {c}x{height}x{width} (C x H x W) but mean_file is "
                    f"{'x'.join(map(str, self.mean.shape))}; the mean must have the uncropped image size "
                    "(compute it with tools/compute_image_mean.py on the same database)")
            mean = self.mean[:, h_off:h_off + oh, w_off:w_off + ow]
        elif self.mean_values.size:
            mv = self.mean_values
            if mv.size != 1 and mv.size != c:
                raise DataError(f"{self._where(key)}specify either 1 mean_value or as many as channels: "
                                f"{c} (got {mv.size})")
            mean = mv[:, None, None] if mv.size == c else mv[:1, None, None]
        if out is None:
            out = np.empty((c, oh, ow), np.float32)
        # One pass per step, written straight into the (mirrored) output; each step is the float32 operation
        # Caffe does, (x - mean) then * scale, so the values are the same as computing in a temporary.
        dst = out[:, :, ::-1] if do_mirror else out
        src = x[:, h_off:h_off + oh, w_off:w_off + ow]
        if mean is not None:
            np.subtract(src, mean, out=dst, dtype=np.float32)
        else:
            dst[...] = src
        if self.scale != 1:
            out *= self.scale
        return out

    @staticmethod
    def _where(key) -> str:
        return f"record '{key_str(key)}': " if key is not None else ""
