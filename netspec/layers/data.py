"""Caffe's data layers: Data (LMDB), ImageData, MemoryData, DummyData, HDF5Data and HDF5Output.

A data layer has no bottoms; calling its module returns the next batch: ``data`` as float32 N x C x H x W
(on the device the module was moved to) and, with a second top, ``label`` as float32 of shape (N,).
``top_shapes([])`` reads the first record, as Caffe's ``DataLayerSetUp``.

Data and ImageData decode and transform batches ahead of time in ``NETSPEC_LOADER_WORKERS`` workers (default
1; threads, or processes with ``NETSPEC_LOADER_KIND=process``; see ``netspec.data.workers``), keeping
``data_param.prefetch`` batches in flight (default 4, Caffe's prefetch queue depth). Records are read
strictly in order and a batch's random crops and flips come from a generator seeded with (the transformer's
seed, the batch index), so the batches are the same with any number of workers, and without any
(``NETSPEC_LOADER_WORKERS=0``, ``NETSPEC_DATA_PREFETCH=0`` or ``prefetch: 0`` load in the calling thread).
For a CUDA net the workers write pinned memory and the copy to the GPU is non-blocking. Errors raised while
loading surface at the ``forward`` that needs the batch, naming the record.

Relative paths (``source``, ``mean_file``) are resolved against the working directory, as Caffe does. When
a path does not exist there but does relative to the prototxt's directory, that one is used with a warning.
"""
from __future__ import annotations

import logging
import os
import re
import weakref
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..data.datum import key_str, parse_datum, read_image, read_image_list
from ..data.lmdb_io import LMDBReader, WrapCursor, check_lmdb
from ..data.shard import Shard
from ..data.transform import DataTransformer
from ..data.workers import BatchTask, Loader, build_inline, loader_kind, loader_workers
from ..errors import DataError, LayerError, NetspecError
from .fillers import fill_
from ..proto import caffe_pb2
from ..registry import Export, register

log = logging.getLogger("netspec")

_warned_paths = set()


def _ident(lp, ctx) -> str:
    return f"{ctx.where}layer '{lp.name}' ({lp.type})"


def check_batch_size(p, field: str, ident: str) -> None:
    if p.batch_size <= 0:
        raise LayerError(f"{ident}: {field}.batch_size must be positive (got {p.batch_size})")


def check_pair(p, a: str, b: str, ident: str) -> None:
    """Two sizes set together or not at all (new_height / new_width, crop_height / crop_width)."""
    x, y = getattr(p, a), getattr(p, b)
    if (x == 0) != (y == 0) or x < 0 or y < 0:
        raise LayerError(f"{ident}: {a} and {b} must be set together (got {x} x {y})")


def _net_dir(ctx) -> Optional[str]:
    """The prototxt's directory, from ``ctx.where`` (``"file:line: "``), if the net came from a file."""
    d = getattr(ctx, "net_dir", None)
    if d:
        return d
    m = re.match(r"^(.*?)(?::\d+)?: $", getattr(ctx, "where", "") or "")
    if not m or not m.group(1):
        return None
    return os.path.dirname(os.path.abspath(m.group(1)))


def resolve_path(path: str, ctx, what: str, ident: str) -> str:
    """``path`` as Caffe resolves it (against the working directory); falls back, with a warning, to the
    prototxt's directory when only that one exists."""
    if not path:
        raise LayerError(f"{ident}: {what} is empty")
    if os.path.isabs(path) or os.path.exists(path):
        return path
    base = _net_dir(ctx)
    if base is not None:
        alt = os.path.join(base, path)
        if os.path.exists(alt):
            if (path, base) not in _warned_paths:
                _warned_paths.add((path, base))
                log.warning("%s: %s '%s' does not exist relative to the working directory %s (where Caffe looks)"
                            "; using '%s' relative to the prototxt", ident, what, path, os.getcwd(), alt)
            return alt
    return path  # the reader's own check reports it, naming the working directory


# ----------------------------------------------------------------------------------------------------------
# the module: batches from a source, loaded inline or by background workers
# ----------------------------------------------------------------------------------------------------------
class _DataModule(nn.Module):
    """Base of the data-layer modules: batches from ``self.source``, as tensors.

    A source with ``plan``/``build`` (see ``netspec.data.workers``) is loaded by background workers when
    ``prefetch > 0``; any source loads inline with ``load_batch()``."""

    def __init__(self, source, ident: str, prefetch: int = 0):
        super().__init__()
        # Follows .to(device)/.cuda() so batches land where the net runs; not part of state_dict.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        self.source = source
        self.ident = ident
        self.prefetch = int(prefetch)
        self._loader: Optional[Loader] = None
        self._finalizer = None

    def top_shapes(self, bottom_shapes):
        try:
            return self.source.top_shapes()
        except NetspecError as e:
            raise type(e)(f"{self.ident}: {e}") from e

    def _workers(self):
        if self.prefetch <= 0 or not hasattr(self.source, "plan"):
            return 0, None
        n = loader_workers()
        return n, (loader_kind() if n else None)

    def _next_batch(self):
        n, kind = self._workers()
        pin = self._anchor.device.type == "cuda" and torch.cuda.is_available()
        loader = self._loader
        if loader is not None and (loader.workers != n or loader.kind != kind or loader.pin != pin):
            self.rewind_prefetch()
        if n == 0:
            return self.source.load_batch()
        if self._loader is None:
            self._loader = Loader(self.source, n, self.prefetch, kind, pin, name=f"netspec-prefetch-{self.ident}")
            self._finalizer = weakref.finalize(self, self._loader.close, False)
        try:
            return self._loader.next()
        except BaseException:
            self.rewind_prefetch()  # a failed batch counts as read: the next forward continues after it
            raise

    def rewind_prefetch(self):
        """Stop the loader workers and put the source back where the consumer is (drops read-ahead)."""
        loader, self._loader = self._loader, None
        if loader is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        loader.rewind()

    def forward(self):
        try:
            arrays = self._next_batch()
        except NetspecError as e:
            raise type(e)(f"{self.ident}: {e}") from e
        dev = self._anchor.device
        # Pinned batches (CUDA) copy asynchronously; the pinned block is kept until the copy has run.
        outs = tuple((a if isinstance(a, torch.Tensor) else torch.from_numpy(a)).to(dev, non_blocking=True)
                     for a in arrays)
        return outs if len(outs) > 1 else outs[0]

    def train_state(self):
        """The consumer's position (read-ahead dropped), for exact resume (netspec.solver.train_state)."""
        self.rewind_prefetch()
        return self.source.get_state() if hasattr(self.source, "get_state") else None

    def load_train_state(self, state):
        self.rewind_prefetch()
        if state is not None:
            self.source.set_state(state)

    def __getstate__(self):
        self.rewind_prefetch()
        state = self.__dict__.copy()
        state["_loader"] = None
        state["_finalizer"] = None
        return state

    def extra_repr(self) -> str:
        return getattr(self.source, "describe", lambda: "")()


# ----------------------------------------------------------------------------------------------------------
# Data (LMDB)
# ----------------------------------------------------------------------------------------------------------
class _LMDBSource:
    """Batches of an LMDB in key order with wrap-around: ``plan`` takes the next keys off a cursor, ``build``
    reads, decodes and transforms them (in any worker: values are fetched by key)."""

    def __init__(self, path: str, batch_size: int, transformer: DataTransformer, labels: bool,
                 shard: Shard = Shard()):
        self.path = check_lmdb(path)
        self.batch_size = batch_size
        self.transformer = transformer
        self.labels = labels
        self.shard = shard
        self.cursor = WrapCursor(self.path)
        self.reader = LMDBReader(self.path)
        self.index = 0  # batches planned so far
        self.offset = 0  # records of the DB stream read so far, this process's and the other ranks'

    def describe(self):
        return f"source={self.path!r}, batch_size={self.batch_size}"

    def _where(self) -> str:
        return f"LMDB '{self.path}': "

    def top_shapes(self):
        with LMDBReader(self.path) as r:
            key, value = r.first()
        try:
            arr = self.transformer.datum_array(value, key)
            shape = self.transformer.infer_shape(arr.shape)
            if self.transformer.crop_size and (arr.shape[1] < shape[1] or arr.shape[2] < shape[2]):
                raise DataError(f"record '{key_str(key)}': image is {arr.shape[1]}x{arr.shape[2]}, smaller than "
                                f"crop_size {self.transformer.crop_size}")
        except DataError as e:
            raise DataError(self._where() + str(e)) from None
        shapes = [(self.batch_size,) + tuple(shape)]
        if self.labels:
            shapes.append((self.batch_size,))
        return shapes

    def plan(self) -> BatchTask:
        try:
            keys, self.offset = self.shard.take(lambda: self.cursor.next(values=False)[0], self.offset,
                                                self.batch_size)
        except DataError as e:
            raise DataError(self._where() + str(e)) from None
        self.reader.env  # opened here, in the consumer's thread, before worker threads share it
        task = BatchTask(self.index, keys)
        self.index += 1
        return task

    def item_name(self, task, i) -> str:
        return f"{self._where()}record '{key_str(task.items[i])}'"

    def build(self, task, out):
        n = self.batch_size
        data = None
        label = out.array((n,)) if self.labels else None
        t = self.transformer
        rng = t.batch_rng(task.index, self.shard)
        key = None
        try:
            for i, key in enumerate(task.items):
                out.item(i)
                d = parse_datum(self.reader.get(key), key)
                arr = t.datum_array(d, key)
                shape = t.infer_shape(arr.shape)
                if data is None:  # Caffe reshapes the batch after its first datum
                    data = out.array((n,) + tuple(shape))
                elif tuple(shape) != data.shape[1:]:
                    raise DataError(
                        f"record '{key_str(key)}' gives a {'x'.join(map(str, shape))} item but this batch's first "
                        f"item is {'x'.join(map(str, data.shape[1:]))}; one batch needs one size (resize the "
                        "images when building the database, use crop_size, or batch_size 1)")
                t(arr, key, out=data[i], rng=rng)
                if label is not None:
                    label[i] = d.label
        except DataError as e:
            raise DataError(self._where() + str(e)) from None
        except Exception as e:  # a decoder's own failure (OpenCV, numpy, ...): name the record it was reading
            what = f"record '{key_str(key)}'" if key is not None else "reading the next record"
            raise DataError(f"{self._where()}{what}: {type(e).__name__}: {e}") from e
        return (data, label) if label is not None else (data,)

    def load_batch(self):
        return build_inline(self)

    def get_state(self):
        return self.cursor.position, self.cursor.wraps, self.index, self.offset

    def set_state(self, state):
        self.cursor.close()
        self.cursor.position, self.cursor.wraps, self.index, *rest = state
        self.offset = rest[0] if rest else 0  # a state pickled before sharding


def _transformer(lp, ctx, ident) -> DataTransformer:
    tp = lp.transform_param
    mean_path = None
    if tp.HasField("mean_file"):
        mean_path = resolve_path(tp.mean_file, ctx, "mean_file", ident)
    try:
        return DataTransformer(tp, ctx.phase, mean_path=mean_path)
    except DataError as e:
        raise DataError(f"{ident}: {e}") from None


def _deprecated_fields(lp, sub, ident):
    for f in ("scale", "mean_file", "crop_size", "mirror"):
        if sub.HasField(f):
            log.warning("%s: %s.%s is deprecated and ignored by Caffe in this (V2) format; move it to "
                        "transform_param", ident, type(sub).__name__, f)


@register("Data", bottoms=0, tops=(1, 2),
          export=Export(refuse='reads an LMDB/LevelDB at run time: replace it with an Input layer (a deploy prototxt)'),
          colour="#DDDDDD",
          example="")
def data_layer(lp, bottom_shapes, ctx):
    """Data layer over an LMDB of Datums, read in key order with wrap-around (TEST and TRAIN alike)."""
    ident = _ident(lp, ctx)
    p = lp.data_param
    check_batch_size(p, "data_param", ident)
    _deprecated_fields(lp, p, ident)
    if p.rand_skip:
        log.info("%s: rand_skip is ignored, as in BVLC Caffe's DataLayer", ident)
    source = resolve_path(p.source, ctx, "data_param.source", ident)
    # Caffe's default backend is LEVELDB; netspec reads LMDB whatever the field says (a LevelDB directory is
    # refused by check_lmdb with the way to convert it).
    if (p.HasField("backend") and p.backend == caffe_pb2.DataParameter.LEVELDB
            and os.path.isfile(os.path.join(source, "data.mdb"))):
        log.warning("%s: backend is LEVELDB but '%s' is an LMDB; reading it as LMDB (set backend: LMDB)",
                    ident, source)
    try:
        src = _LMDBSource(source, p.batch_size, _transformer(lp, ctx, ident), len(lp.top) > 1,
                          Shard.current(ctx.phase == caffe_pb2.TRAIN))
    except DataError as e:
        msg = str(e)
        raise DataError(msg if msg.startswith(ident) else f"{ident}: {msg}") from None
    return _DataModule(src, ident, prefetch=p.prefetch)


# ----------------------------------------------------------------------------------------------------------
# ImageData
# ----------------------------------------------------------------------------------------------------------
class _ListStream:
    """The item stream of a list-file source, in Caffe's ImageDataLayer order: the list in file order, or
    shuffled (a new permutation each epoch), an optional random skip at start, wrap-around. ``plan`` takes a
    batch of line indices for this process's shard; ``get_state``/``set_state`` save the position (exact
    resume, loader rewinds). Subclasses keep ``self.lines`` of (name, ..., line number) and read the items."""

    def _start(self, list_path, batch_size, shuffle, rand_skip, shard, *, seeded=False, seed=None):
        """``seeded``: draw a generator (and its ``seed``) even without shuffle or skip, for per-batch draws;
        ``seed``: that generator's seed (default: drawn from torch's global RNG)."""
        self.list_path, self.batch_size, self.shuffle, self.shard = list_path, batch_size, shuffle, shard
        self.offset = 0  # lines of the (shuffled) list stream read so far, by this process and the other ranks
        self.index = 0  # batches planned so far
        self.pos = 0
        self._rng = None
        if shuffle or rand_skip or seeded or seed is not None:
            self.seed = int(torch.randint(0, 2 ** 62, (1,)).item()) if seed is None else int(seed)
            self._rng = np.random.default_rng(self.seed)
        self.order = np.arange(len(self.lines))
        if shuffle:
            log.info("Shuffling data")
            self._rng.shuffle(self.order)
        if rand_skip:
            skip = int(self._rng.integers(rand_skip))
            if skip >= len(self.lines):
                raise DataError(f"image list '{list_path}': not enough points ({len(self.lines)}) to skip {skip}")
            log.info("Skipping first %d data points.", skip)
            self.pos = skip

    def _advance(self) -> int:
        line = int(self.order[self.pos])
        self.pos += 1
        if self.pos >= len(self.lines):
            self.pos = 0
            if self.shuffle:
                self.order = self._rng.permutation(self.order)  # a new array: saved states keep theirs
        return line

    def plan(self) -> BatchTask:
        lines, self.offset = self.shard.take(self._advance, self.offset, self.batch_size)
        task = BatchTask(self.index, lines)
        self.index += 1
        return task

    def item_name(self, task, i) -> str:
        name, _, lineno = self.lines[task.items[i]]
        return f"{self.list_path}:{lineno}: image '{self.root + name}'"

    def load_batch(self):
        return build_inline(self)

    def get_state(self):
        return (self.pos, self.order, None if self._rng is None else self._rng.bit_generator.state, self.index,
                self.offset)

    def set_state(self, state):
        self.pos, self.order, rs, self.index, *rest = state
        self.offset = rest[0] if rest else 0  # a state pickled before sharding
        if rs is not None:
            self._rng.bit_generator.state = rs


class _ImageListSource(_ListStream):
    def __init__(self, list_path, root_folder, batch_size, shuffle, new_height, new_width, is_color,
                 rand_skip, transformer: DataTransformer, labels: bool, shard: Shard = Shard()):
        self.lines = read_image_list(list_path)
        self.root = root_folder
        self.new_height, self.new_width = new_height, new_width
        self.is_color = is_color
        self.transformer = transformer
        self.labels = labels
        self._start(list_path, batch_size, shuffle, rand_skip, shard)

    def describe(self):
        return f"source={self.list_path!r}, {len(self.lines)} images, batch_size={self.batch_size}"

    def _read(self, line):
        name, label, lineno = self.lines[line]
        full = self.root + name
        where = f"{self.list_path}:{lineno}: "
        try:
            img = read_image(full, self.new_height, self.new_width, self.is_color, where)
        except DataError as e:
            hint = ""
            if self.root and not self.root.endswith(("/", os.sep)) and os.path.exists(os.path.join(self.root, name)):
                hint = (f"; root_folder '{self.root}' is prepended verbatim (as Caffe): end it with '/' "
                        f"(found '{os.path.join(self.root, name)}')")
            raise DataError(f"{e}{hint}") from None
        return np.ascontiguousarray(img.transpose(2, 0, 1)), label, f"{self.list_path}:{lineno}"

    def top_shapes(self):
        arr, _, _ = self._read(int(self.order[self.pos]))
        shape = self.transformer.infer_shape(arr.shape)
        if arr.shape[1] < shape[1] or arr.shape[2] < shape[2]:
            raise DataError(f"image is {arr.shape[1]}x{arr.shape[2]}, smaller than crop_size "
                            f"{self.transformer.crop_size}")
        shapes = [(self.batch_size,) + tuple(shape)]
        if self.labels:
            shapes.append((self.batch_size,))
        return shapes

    def build(self, task, out):
        n = self.batch_size
        data = None
        label = out.array((n,))
        rng = self.transformer.batch_rng(task.index, self.shard)
        for i, line in enumerate(task.items):
            out.item(i)
            try:
                arr, lab, where = self._read(line)
            except NetspecError:
                raise
            except Exception as e:  # a decoder's own failure: name the list line it was reading
                raise DataError(f"{self.item_name(task, i)}: {type(e).__name__}: {e}") from e
            shape = self.transformer.infer_shape(arr.shape)
            if data is None:
                data = out.array((n,) + tuple(shape))
            elif tuple(shape) != data.shape[1:]:
                raise DataError(f"{where}: image gives a {'x'.join(map(str, shape))} item but this batch's first "
                                f"item is {'x'.join(map(str, data.shape[1:]))}; set new_height/new_width or "
                                "crop_size, or use batch_size 1")
            self.transformer(arr, where, out=data[i], rng=rng)
            label[i] = lab
        return (data, label) if self.labels else (data,)


@register("ImageData", bottoms=0, tops=(1, 2),
          export=Export(refuse='reads image files at run time: replace it with an Input layer (a deploy prototxt)'),
          example="")
def image_data_layer(lp, bottom_shapes, ctx):
    """ImageData: a list file of ``<path> <label>`` lines; images read with OpenCV (BGR) from
    ``root_folder + path``, optionally resized to new_height x new_width, then transformed."""
    ident = _ident(lp, ctx)
    p = lp.image_data_param
    check_batch_size(p, "image_data_param", ident)
    check_pair(p, "new_height", "new_width", ident)
    _deprecated_fields(lp, p, ident)
    source = resolve_path(p.source, ctx, "image_data_param.source", ident)
    root = p.root_folder
    if root:
        root = resolve_path(root, ctx, "image_data_param.root_folder", ident)
    try:
        src = _ImageListSource(source, root, p.batch_size, p.shuffle, p.new_height, p.new_width, p.is_color,
                               p.rand_skip, _transformer(lp, ctx, ident), len(lp.top) > 1,
                               Shard.current(ctx.phase == caffe_pb2.TRAIN))
    except DataError as e:
        msg = str(e)
        raise DataError(msg if msg.startswith(ident) else f"{ident}: {msg}") from None
    return _DataModule(src, ident, prefetch=lp.data_param.prefetch if lp.HasField("data_param") else 4)


# ----------------------------------------------------------------------------------------------------------
# MemoryData
# ----------------------------------------------------------------------------------------------------------
class _MemorySource:
    def __init__(self, batch_size, channels, height, width, labels: bool):
        self.batch_size = batch_size
        self.shape = (channels, height, width)
        self.labels = labels
        self.data: Optional[np.ndarray] = None
        self.label: Optional[np.ndarray] = None
        self.pos = 0

    def describe(self):
        return f"batch_size={self.batch_size}, shape={self.shape}"

    def top_shapes(self):
        shapes = [(self.batch_size,) + self.shape]
        if self.labels:
            shapes.append((self.batch_size,))
        return shapes

    def set_input_arrays(self, data, labels):
        data = np.ascontiguousarray(data, dtype=np.float32)
        labels = np.ascontiguousarray(labels, dtype=np.float32)
        if data.ndim != 4:
            raise DataError(f"set_input_arrays: data must be 4-D N x C x H x W, got shape {data.shape}")
        if data.shape[1:] != self.shape:
            raise DataError(f"set_input_arrays: data items are {'x'.join(map(str, data.shape[1:]))}, the layer "
                            f"expects channels x height x width = {'x'.join(map(str, self.shape))}")
        n = data.shape[0]
        if labels.size != n or (labels.ndim > 1 and labels.shape[0] != n):
            raise DataError(f"set_input_arrays: {n} data items but labels of shape {labels.shape} "
                            "(need one label per item)")
        if n == 0 or n % self.batch_size:
            raise DataError(f"set_input_arrays: the number of items ({n}) must be a positive multiple of "
                            f"batch_size {self.batch_size}")
        self.data, self.label, self.pos = data, labels.reshape(n), 0

    def load_batch(self):
        if self.data is None:
            raise DataError("MemoryData needs its arrays first: call set_input_arrays(data, labels) "
                            "(pycaffe: net.set_input_arrays)")
        b, p = self.batch_size, self.pos
        out = (self.data[p:p + b].copy(),)
        if self.labels:
            out += (self.label[p:p + b].copy(),)
        self.pos = (p + b) % self.data.shape[0]
        return out

    def get_state(self):
        return self.pos

    def set_state(self, state):
        self.pos = state


class MemoryDataModule(_DataModule):
    """MemoryData: batches from arrays given with :meth:`set_input_arrays` (no transformation, as Caffe's
    ``MemoryDataLayer::Reset``); consecutive forwards step through them and wrap around."""

    def set_input_arrays(self, data, labels):
        try:
            self.source.set_input_arrays(data, labels)
        except DataError as e:
            raise DataError(f"{self.ident}: {e}") from None


@register("MemoryData", bottoms=0, tops=(1, 2),
          export=Export(refuse='is fed from Python at run time: replace it with an Input layer'),
          example="")
def memory_data_layer(lp, bottom_shapes, ctx):
    ident = _ident(lp, ctx)
    p = lp.memory_data_param
    dims = (p.batch_size, p.channels, p.height, p.width)
    if any(d <= 0 for d in dims):
        raise LayerError(f"{ident}: memory_data_param needs positive batch_size, channels, height and width "
                         f"(got {' x '.join(map(str, dims))})")
    if lp.HasField("transform_param") and lp.transform_param.ListFields():
        log.warning("%s: transform_param is not applied to arrays given with set_input_arrays (as in Caffe)",
                    ident)
    return MemoryDataModule(_MemorySource(*dims, labels=len(lp.top) > 1), ident)


# ----------------------------------------------------------------------------------------------------------
# DummyData
# ----------------------------------------------------------------------------------------------------------
class DummyDataModule(nn.Module):
    """DummyData: tops filled by fillers. Constant fillers are filled once; the others refill every forward
    (Caffe's ``refill_``)."""

    def __init__(self, shapes, fillers, ident):
        super().__init__()
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        self.shapes = [tuple(s) for s in shapes]
        self.fillers = fillers
        self.ident = ident
        self._const = {}
        for i, s in enumerate(self.shapes):
            f = fillers[i if len(fillers) > 1 else 0]
            if f.type == "constant":
                self._const[i] = fill_(torch.empty(s), f)

    def top_shapes(self, bottom_shapes):
        return list(self.shapes)

    def __getstate__(self):  # FillerParameter messages do not pickle: keep their bytes
        state = self.__dict__.copy()
        state["fillers"] = [f.SerializeToString() for f in self.fillers]
        return state

    def __setstate__(self, state):
        state["fillers"] = [caffe_pb2.FillerParameter.FromString(b) for b in state["fillers"]]
        super().__setstate__(state)

    def forward(self):
        dev = self._anchor.device
        outs = []
        for i, s in enumerate(self.shapes):
            if i in self._const:
                outs.append(self._const[i].to(dev, copy=True))
            else:
                outs.append(fill_(torch.empty(s, device=dev), self.fillers[i if len(self.fillers) > 1 else 0]))
        return tuple(outs) if len(outs) > 1 else outs[0]


@register("DummyData", bottoms=0, tops=(1, None),
          export=Export(refuse='generates its data at run time: replace it with an Input layer'),
          example=('layer { name: "l" type: "DummyData" top: "y" dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "gaussian" } } }'),
          backward=False)
def dummy_data_layer(lp, bottom_shapes, ctx):
    ident = _ident(lp, ctx)
    p = lp.dummy_data_param
    n = len(lp.top)
    nf = len(p.data_filler)
    if nf not in (0, 1, n):
        raise LayerError(f"{ident}: give 0, 1 or {n} (one per top) data_filler, got {nf}")
    fillers = list(p.data_filler) if nf else [caffe_pb2.FillerParameter(type="constant", value=0)]
    legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
    nlegacy = sum(len(x) for x in legacy)
    if p.shape and nlegacy:
        raise LayerError(f"{ident}: both shape and legacy num/channels/height/width were specified")
    shapes = []
    if nlegacy:
        for name, vals in zip(("num", "channels", "height", "width"), legacy):
            if len(vals) not in (1, n):
                raise LayerError(f"{ident}: legacy '{name}' must be given once or once per top ({n}), "
                                 f"got {len(vals)}")
        for i in range(n):
            shapes.append(tuple(v[0] if len(v) == 1 else v[i] for v in legacy))
    else:
        if len(p.shape) not in (1, n):
            raise LayerError(f"{ident}: give 1 or {n} (one per top) shape, got {len(p.shape)}")
        for i in range(n):
            shapes.append(tuple(p.shape[0 if len(p.shape) == 1 else i].dim))
    for s in shapes:
        if any(d < 0 for d in s):
            raise LayerError(f"{ident}: negative dimension in shape {s}")
    return DummyDataModule(shapes, fillers, ident)


# ----------------------------------------------------------------------------------------------------------
# HDF5Data / HDF5Output
# ----------------------------------------------------------------------------------------------------------
def _h5py(ident):
    try:
        import h5py
    except ImportError:
        raise LayerError(f"{ident}: HDF5 layers need the 'h5py' package: pip install h5py") from None
    return h5py


class _HDF5Source:
    def __init__(self, list_path, files, tops, batch_size, shuffle, h5py):
        self.list_path = list_path
        self.files = files
        self.tops = tops
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.h5py = h5py
        self._rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item())) if shuffle else None
        self.file_perm = np.arange(len(files))
        if shuffle:
            self._rng.shuffle(self.file_perm)
        self.current_file = 0
        self._load(self.files[self.file_perm[0]])
        self.row = 0

    def describe(self):
        return f"source={self.list_path!r}, {len(self.files)} files, batch_size={self.batch_size}"

    def _load(self, fname):
        if not os.path.isfile(fname):
            raise DataError(f"HDF5 file '{fname}' listed in '{self.list_path}' not found (working directory "
                            f"{os.getcwd()})")
        try:
            with self.h5py.File(fname, "r") as f:
                blobs = []
                for t in self.tops:
                    if t not in f:
                        raise DataError(f"HDF5 file '{fname}' has no dataset '{t}' (the layer's tops name the "
                                        f"datasets; it has: {', '.join(sorted(f.keys()))})")
                    a = np.asarray(f[t][()], dtype=np.float32)
                    if a.ndim < 1:
                        raise DataError(f"HDF5 file '{fname}' dataset '{t}' must have at least 1 axis")
                    blobs.append(np.ascontiguousarray(a))
        except OSError as e:
            raise DataError(f"cannot read HDF5 file '{fname}': {e}") from None
        num = blobs[0].shape[0]
        for t, b in zip(self.tops, blobs):
            if b.shape[0] != num:
                raise DataError(f"HDF5 file '{fname}': dataset '{t}' has {b.shape[0]} rows, "
                                f"'{self.tops[0]}' has {num}")
        if num == 0:
            raise DataError(f"HDF5 file '{fname}' holds no rows")
        self.blobs = blobs
        self.data_perm = np.arange(num)
        if self.shuffle:
            self._rng.shuffle(self.data_perm)

    def top_shapes(self):
        return [(self.batch_size,) + b.shape[1:] for b in self.blobs]

    def _next(self):
        self.row += 1
        if self.row == self.blobs[0].shape[0]:
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    if self.shuffle:
                        self._rng.shuffle(self.file_perm)
                self._load(self.files[self.file_perm[self.current_file]])
            self.row = 0
            if self.shuffle:
                self._rng.shuffle(self.data_perm)

    def load_batch(self):
        outs = [np.empty((self.batch_size,) + b.shape[1:], dtype=np.float32) for b in self.blobs]
        for i in range(self.batch_size):
            for o, b in zip(outs, self.blobs):
                if b.shape[1:] != o.shape[1:]:
                    raise DataError(f"HDF5 item shapes changed between files: {b.shape[1:]} vs {o.shape[1:]}")
                o[i] = b[self.data_perm[self.row]]
            self._next()
        return tuple(outs)

    def get_state(self):
        return None

    def set_state(self, state):
        pass


@register("HDF5Data", bottoms=0, tops=(1, None),
          export=Export(refuse='reads HDF5 files at run time: replace it with an Input layer (a deploy prototxt)'),
          example="")
def hdf5_data_layer(lp, bottom_shapes, ctx):
    """HDF5Data: ``source`` lists HDF5 files (one path per line); each holds one dataset per top, named as
    the top. Rows are read in order (files too), wrapping around; ``shuffle`` permutes both. No transform."""
    ident = _ident(lp, ctx)
    h5py = _h5py(ident)
    p = lp.hdf5_data_param
    if lp.HasField("transform_param"):
        raise LayerError(f"{ident}: HDF5Data does not transform data; remove transform_param")
    check_batch_size(p, "hdf5_data_param", ident)
    source = resolve_path(p.source, ctx, "hdf5_data_param.source", ident)
    if not os.path.isfile(source):
        raise DataError(f"{ident}: HDF5 file list '{source}' not found (working directory {os.getcwd()})")
    with open(source, "r", encoding="utf-8") as f:
        files = f.read().split()  # Caffe reads whitespace-separated tokens
    if not files:
        raise DataError(f"{ident}: must have at least 1 HDF5 filename listed in '{source}'")
    try:
        src = _HDF5Source(source, files, list(lp.top), p.batch_size, p.shuffle, h5py)
    except DataError as e:
        raise DataError(f"{ident}: {e}") from None
    return _DataModule(src, ident, prefetch=0)


class HDF5OutputModule(nn.Module):
    """HDF5Output: writes its two bottoms as datasets ``data`` and ``label`` of ``file_name`` at every
    forward (the file holds the last batch; Caffe truncates the file at setup)."""

    def __init__(self, file_name, ident, h5py):
        super().__init__()
        self.file_name = file_name
        self.ident = ident
        self.h5py = h5py

    def top_shapes(self, bottom_shapes):
        return []

    def forward(self, data, label):
        if data.shape[0] != label.shape[0]:
            raise LayerError(f"{self.ident}: data and label must have the same number of items "
                             f"({data.shape[0]} vs {label.shape[0]})")
        with self.h5py.File(self.file_name, "w") as f:
            f.create_dataset("data", data=data.detach().to("cpu", torch.float32).numpy())
            f.create_dataset("label", data=label.detach().to("cpu", torch.float32).numpy())
        return ()


@register("HDF5Output", bottoms=2, tops=0,
          export=Export(refuse='writes files'),
          example="")
def hdf5_output_layer(lp, bottom_shapes, ctx):
    ident = _ident(lp, ctx)
    h5py = _h5py(ident)
    fname = lp.hdf5_output_param.file_name
    if not fname:
        raise LayerError(f"{ident}: hdf5_output_param.file_name is empty")
    return HDF5OutputModule(fname, ident, h5py)


def set_input_arrays(module_or_net, data, labels, layer: Optional[str] = None):
    """pycaffe's ``net.set_input_arrays(data, labels)``: feed the (first, or named) MemoryData layer."""
    mods = []
    if isinstance(module_or_net, MemoryDataModule):
        mods = [module_or_net]
    else:
        root = getattr(module_or_net, "module", module_or_net)
        for node in getattr(root, "nodes", []):
            m = root.get_module(node.index)
            if isinstance(m, MemoryDataModule) and (layer is None or node.name == layer):
                mods.append(m)
    if not mods:
        raise LayerError("set_input_arrays needs a MemoryData layer" + (f" named '{layer}'" if layer else "")
                         + " in the net")
    mods[0].set_input_arrays(data, labels)
