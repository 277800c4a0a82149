"""Caffe's binary files: ``.caffemodel``, ``.solverstate`` and ``.binaryproto``.

All three are plain protobuf serializations with no header (Caffe writes them with
``SerializeToOstream``): a ``NetParameter``, a ``SolverState`` and a ``BlobProto``.

Two ways to read a caffemodel:

* :func:`read_net_binary` parses the whole file with the protobuf class, float data
  included. Simple, but a 550 MB VGG16 model then lives in memory three times
  (file bytes, protobuf repeated fields, numpy copies).
* :func:`read_caffemodel` walks the protobuf wire format itself over an ``mmap`` of
  the file, copies every blob's float data straight into a numpy array, and parses
  only the metadata (names, types, params, blob shapes) with the protobuf class.
  Peak memory is about one file size; there is no 64 MB / 2 GB message limit.

Every malformed input raises :class:`~netspec.errors.FormatError` naming what was
expected, what was found and the byte offset. The walker never allocates from a
length field it has not checked against the bytes that are really there.

Writers are byte-compatible with Caffe (fields in field-number order, ``data`` and
``shape.dim`` packed, ``shape`` after ``data``), stream layer by layer, and are atomic
(temporary file in the target directory, fsync, ``os.replace``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, Sequence, Union

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from netspec import proto
from netspec.formats.atomic import atomic_write
from netspec.errors import FormatError
from netspec.formats.wire import (  # noqa: F401  (_key_bytes, _varint_bytes: the tests build records with them)
    _BLOB_DATA, _BLOB_DIFF, _COPY_CHUNK, _LAYER_BLOBS, _LEN, _NET_LAYER, _NET_LAYERS_V1, _STATE_HISTORY,
    _V0_BLOBS, _V1_BLOBS, _V1_V0LAYER, _BlobRecord, _error, _iter_fields, _key_bytes, _len_field, _scan_blob,
    _scan_net, _split_at_field, _varint_bytes, _with_hint)
from netspec.proto import caffe_pb2  # annotations only: code uses _pb() (the schema in use)

__all__ = [
    "CaffeModel",
    "SolverStateData",
    "read_net_binary",
    "read_caffemodel",
    "parse_caffemodel",
    "write_caffemodel",
    "write_net_binary",
    "write_net_module",
    "read_solverstate",
    "parse_solverstate",
    "write_solverstate",
    "read_blobproto",
    "parse_blobproto",
    "write_blobproto",
    "blob_to_array",
    "array_to_blob",
    "blob_shape",
    "is_legacy_blob",
]

PathLike = Union[str, os.PathLike]


def _pb():
    """The schema module in use: bundled caffe_pb2, or a fork's after proto.load_proto()."""
    return proto.pb2()


def _is_message(obj, full_name: str) -> bool:
    """isinstance by message name, so messages of any loaded schema qualify."""
    descriptor = getattr(obj, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) == full_name


_PAGE = mmap.PAGESIZE


# ---------------------------------------------------------------------------
# public data holders
# ---------------------------------------------------------------------------


@dataclass
class CaffeModel:
    """A caffemodel read by :func:`read_caffemodel`.

    ``net`` is the file's ``NetParameter`` with every ``BlobProto`` reduced to a
    *stub*: its dims (``shape`` or legacy ``num/channels/height/width``) are kept, its
    payload (``data``, ``diff``, ``double_data``, ``double_diff``) is removed. The
    float data lives in ``blobs[i]`` (one float32 array per blob of ``net.layer[i]``,
    in file order, duplicate layer names kept) and ``v1_blobs[i]`` (same for the
    deprecated ``net.layers[i]``, V1 files; for V0 files the blobs of the nested
    ``layers[i].layer`` follow those of ``layers[i]``). Arrays have Caffe's shape:
    ``shape.dim``, or ``(num, channels, height, width)`` when a legacy dim is
    present (Caffe's ``Blob::FromProto`` gives legacy dims precedence).
    """

    net: caffe_pb2.NetParameter
    blobs: list[list[np.ndarray]] = field(default_factory=list)
    v1_blobs: list[list[np.ndarray]] = field(default_factory=list)
    source: str = ""

    def items(self) -> Iterator[tuple[object, list[np.ndarray]]]:
        """(layer message, arrays) for every layer: V1 ``layers`` first, then ``layer``
        (the order Caffe serializes them in)."""
        yield from zip(self.net.layers, self.v1_blobs)
        yield from zip(self.net.layer, self.blobs)

    @property
    def nbytes(self) -> int:
        """Bytes held by the float arrays."""
        return sum(a.nbytes for arrays in (*self.blobs, *self.v1_blobs) for a in arrays)


@dataclass
class SolverStateData:
    """A ``.solverstate`` (Caffe ``SolverState``) with its history as numpy arrays.

    ``history`` holds one float32 array per history blob in Caffe's order (learnable
    params in net order; AdaDelta/Adam append a second set). ``learned_net`` is the
    caffemodel path exactly as Caffe wrote it (relative to Caffe's CWD).
    """

    iter: int = 0
    learned_net: str = ""
    history: list[np.ndarray] = field(default_factory=list)
    current_step: int = 0

    def to_proto(self) -> caffe_pb2.SolverState:
        """The equivalent ``caffe_pb2.SolverState`` (history with float data)."""
        state = _pb().SolverState(
            iter=self.iter, learned_net=self.learned_net, current_step=self.current_step
        )
        for arr in self.history:
            state.history.add().CopyFrom(array_to_blob(arr))
        return state

    @classmethod
    def from_proto(cls, state: caffe_pb2.SolverState) -> "SolverStateData":
        return cls(
            iter=state.iter,
            learned_net=state.learned_net,
            history=[blob_to_array(b) for b in state.history],
            current_step=state.current_step,
        )


# ---------------------------------------------------------------------------
# metadata parsing and payload materialisation
# ---------------------------------------------------------------------------


def _check_strings(msg, src: str, where: str) -> None:
    """upb returns invalid UTF-8 in proto2 ``string`` fields as ``bytes``; reject it
    here rather than let a ``bytes`` layer name surprise the caller later."""
    for fd, value in msg.ListFields():
        if fd.type == FieldDescriptor.TYPE_STRING:
            values = value if _is_repeated(fd) else [value]
            for v in values:
                if isinstance(v, bytes):
                    raise FormatError(f"{src}: {where}: expected UTF-8 text in field "
                                      f"'{fd.name}', found bytes {v[:40]!r}")
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            values = value if _is_repeated(fd) else [value]
            for i, v in enumerate(values):
                _check_strings(v, src, f"{where}.{fd.name}[{i}]" if _is_repeated(fd)
                               else f"{where}.{fd.name}")


def _is_repeated(fd) -> bool:
    is_rep = getattr(fd, "is_repeated", None)
    if is_rep is not None:
        return bool(is_rep)
    return fd.label == FieldDescriptor.LABEL_REPEATED


def _parse(cls, data: bytes, src: str, what: str):
    try:
        return cls.FromString(data)
    except DecodeError as e:
        raise FormatError(f"{src}: expected a valid {what}, found bytes protobuf cannot "
                          f"parse ({e})") from None


def _parse_net_meta(meta: bytes, layer_spans, src: str) -> caffe_pb2.NetParameter:
    try:
        return _pb().NetParameter.FromString(meta)
    except DecodeError as e:
        # Localise the failure: parse each layer on its own.
        for offset, filtered in layer_spans:
            for cls in (_pb().LayerParameter, _pb().V1LayerParameter):
                try:
                    cls.FromString(filtered)
                    break
                except DecodeError:
                    continue
            else:
                raise FormatError(f"{src}: byte {offset}: expected a LayerParameter, found "
                                  f"bytes protobuf cannot parse ({e})") from None
        raise FormatError(f"{src}: expected a NetParameter, found fields outside the layers "
                          f"that protobuf cannot parse ({e})") from None


def is_legacy_blob(blob: caffe_pb2.BlobProto) -> bool:
    """True when the blob's dims are the legacy num/channels/height/width fields."""
    return (blob.HasField("num") or blob.HasField("channels") or blob.HasField("height")
            or blob.HasField("width"))


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """The shape Caffe gives a BlobProto: legacy ``(num, channels, height, width)`` if
    any of those four is present (``Blob::FromProto``), else ``shape.dim``."""
    if is_legacy_blob(blob):
        dims = (blob.num, blob.channels, blob.height, blob.width)
    else:
        dims = tuple(blob.shape.dim)
    if any(d < 0 for d in dims):
        raise FormatError(f"expected non-negative blob dims, found {dims}")
    return dims


def _materialize(buf, rec: _BlobRecord, shape, release) -> np.ndarray:
    """Copy the payload pieces of ``rec`` into one new float32 array of ``shape``."""
    # Caffe uses double_data when it is non-empty, else data.
    pieces, dtype = (rec.doubles, np.dtype("<f8")) if rec.doubles else (rec.floats, np.dtype("<f4"))
    total = rec.count()
    out = np.empty(total, dtype=np.float32)
    i = 0
    for offset, count, stride in pieces:
        done = 0
        while done < count:
            n = min(_COPY_CHUNK, count - done)
            start = offset + done * stride
            view = np.ndarray((n,), dtype=dtype, buffer=buf, offset=start, strides=(stride,))
            with np.errstate(over="ignore"):  # double_data beyond float32 becomes inf, as Caffe's cast
                out[i:i + n] = view
            del view
            if release is not None:
                release(start, (n - 1) * stride + dtype.itemsize)
            i += n
            done += n
    return out.reshape(shape)


def _blob_arrays(buf, stubs, recs, src: str, where: str, release) -> list[np.ndarray]:
    if len(stubs) != len(recs):  # cannot happen for a well-formed walk; guard anyway
        raise FormatError(f"{src}: {where}: expected {len(recs)} blobs, found {len(stubs)}")
    arrays = []
    for j, (stub, rec) in enumerate(zip(stubs, recs)):
        try:
            shape = blob_shape(stub)
        except FormatError as e:
            raise FormatError(f"{src}: byte {rec.offset} ({where}, blob {j}): {e}") from None
        count = 1
        for d in shape:
            count *= d
        n = rec.count()
        if count != n:
            field_name = "double_data" if rec.doubles else "data"
            raise _error(src, rec.offset, f"{where}, blob {j}",
                         f"{count} values for blob shape {shape}",
                         f"{n} values in '{field_name}'")
        arrays.append(_materialize(buf, rec, shape, release))
    return arrays


# ---------------------------------------------------------------------------
# file access
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _mapped(path: PathLike):
    """mmap a file read-only; yields (buffer, size, release) where release(start, n)
    drops already-copied pages from the process's resident set."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            yield b"", 0, None
            return
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    release = None
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        def release(start: int, length: int) -> None:
            aligned = start - start % _PAGE
            mm.madvise(mmap.MADV_DONTNEED, aligned, start + length - aligned)
    try:
        yield mm, size, release
    finally:
        try:
            mm.close()
        except BufferError:  # a numpy view still held by an in-flight exception's frame
            pass


def _as_buffer(data) -> tuple[object, int]:
    if isinstance(data, (bytes, bytearray)):
        return data, len(data)
    view = memoryview(data).cast("B")
    return view, view.nbytes


def _parse_caffemodel(buf, size: int, src: str, release) -> CaffeModel:
    if size == 0:
        raise FormatError(f"{src}: expected a Caffe NetParameter (caffemodel), found an empty file")
    try:
        meta, layer_recs, v1_recs, spans = _scan_net(buf, size, src)
    except FormatError as e:
        raise _with_hint(e, buf, size, "net") from None
    if not layer_recs and not v1_recs:
        raise _with_hint(FormatError(
            f"{src}: expected a Caffe NetParameter with 'layer' (field 100) or V1 'layers' "
            "(field 2) entries, found none"), buf, size, "net")
    net = _parse_net_meta(meta, spans, src)
    if len(net.layer) != len(layer_recs) or len(net.layers) != len(v1_recs):
        raise FormatError(f"{src}: expected {len(layer_recs)} layer / {len(v1_recs)} layers "
                          f"entries, protobuf found {len(net.layer)} / {len(net.layers)}")
    _check_strings(net, src, "NetParameter")
    blobs = []
    for i, (layer, recs) in enumerate(zip(net.layer, layer_recs)):
        blobs.append(_blob_arrays(buf, layer.blobs, recs, src, f"layer #{i} '{layer.name}'",
                                  release))
    v1_blobs = []
    for i, (layer, recs) in enumerate(zip(net.layers, v1_recs)):
        stubs = list(layer.blobs) + list(layer.layer.blobs)
        v1_blobs.append(_blob_arrays(buf, stubs, recs, src, f"V1 layers #{i} '{layer.name}'",
                                     release))
    return CaffeModel(net=net, blobs=blobs, v1_blobs=v1_blobs, source=src)


def read_caffemodel(path: PathLike) -> CaffeModel:
    """Read a ``.caffemodel`` (binary ``NetParameter``) fast and in bounded memory.

    Layer metadata is parsed with the schema in use (``netspec.proto.pb2()``); blob
    data goes straight from an mmap of the file into float32 arrays (see
    :class:`CaffeModel`). Nothing is upgraded: apply
    :func:`netspec.passes.upgrade.upgrade_caffemodel` for V0/V1 files.
    """
    src = os.fspath(path)
    with _mapped(path) as (buf, size, release):
        return _parse_caffemodel(buf, size, src, release)


def parse_caffemodel(data, source: str = "<bytes>") -> CaffeModel:
    """:func:`read_caffemodel` for a bytes-like object already in memory."""
    buf, size = _as_buffer(data)
    return _parse_caffemodel(buf, size, source, None)


def read_net_binary(path: PathLike) -> caffe_pb2.NetParameter:
    """Parse a binary ``NetParameter`` file entirely with the protobuf class (blob data
    included, in ``BlobProto.data``). Prefer :func:`read_caffemodel` for big models."""
    src = os.fspath(path)
    with open(src, "rb") as f:
        data = f.read()
    if not data:
        raise FormatError(f"{src}: expected a Caffe NetParameter, found an empty file")
    try:
        net = _pb().NetParameter.FromString(data)
    except DecodeError as e:
        # Let the wire walker say where and what; fall back to protobuf's message.
        _parse_caffemodel(data, len(data), src, None)
        raise FormatError(f"{src}: expected a NetParameter, found bytes protobuf cannot "
                          f"parse ({e})") from None
    if not net.layer and not net.layers:
        raise _with_hint(FormatError(
            f"{src}: expected a Caffe NetParameter with 'layer' (field 100) or V1 'layers' "
            "(field 2) entries, found none"), data, len(data), "net")
    _check_strings(net, src, "NetParameter")
    for kind, layers in (("layer", net.layer), ("V1 layers", net.layers)):
        for layer in layers:
            for j, blob in enumerate(layer.blobs):  # as read_caffemodel: the shape must match the values held
                count = 1
                for d in blob_shape(blob):
                    count *= d
                held = len(blob.double_data) or len(blob.data)
                if count != held:
                    raise FormatError(f"{src}: {kind} '{layer.name}' blob {j}: shape {blob_shape(blob)} claims "
                                      f"{count} values, the file holds {held}")
    return net


def _parse_solverstate(buf, size: int, src: str, release) -> SolverStateData:
    pieces: list[bytes] = []
    recs: list[_BlobRecord] = []
    try:
        for num, wt, fstart, vstart, vend in _iter_fields(buf, 0, size, src, "SolverState"):
            if num == _STATE_HISTORY and wt == _LEN:
                stub, rec = _scan_blob(buf, vstart, vend, src, f"history blob {len(recs)}")
                recs.append(rec)
                pieces.append(_len_field(_STATE_HISTORY, stub))
            else:
                pieces.append(bytes(buf[fstart:vend]))
    except FormatError as e:
        raise _with_hint(e, buf, size, "state") from None
    state = _parse(_pb().SolverState, b"".join(pieces), src, "SolverState")
    if not state.HasField("iter"):
        raise _with_hint(FormatError(
            f"{src}: expected a Caffe SolverState (field 'iter' = 1 is always written), "
            "found none"), buf, size, "state")
    _check_strings(state, src, "SolverState")
    history = _blob_arrays(buf, state.history, recs, src, "history", release)
    return SolverStateData(iter=state.iter, learned_net=state.learned_net,
                           history=history, current_step=state.current_step)


def read_solverstate(path: PathLike) -> SolverStateData:
    """Read a ``.solverstate`` (binary ``SolverState``); history blobs become arrays.

    Like :func:`read_caffemodel` (mmap, bounded memory). The result's ``iter``,
    ``learned_net``, ``current_step`` and ``len(history)`` read like the protobuf
    message's; :func:`blob_to_array` passes its arrays through.
    """
    src = os.fspath(path)
    with _mapped(path) as (buf, size, release):
        return _parse_solverstate(buf, size, src, release)


def parse_solverstate(data, source: str = "<bytes>") -> SolverStateData:
    """:func:`read_solverstate` for a bytes-like object already in memory."""
    buf, size = _as_buffer(data)
    return _parse_solverstate(buf, size, source, None)


def _parse_blob_buffer(buf, size: int, src: str, release) -> np.ndarray:
    try:
        stub_bytes, rec = _scan_blob(buf, 0, size, src, "BlobProto")
        stub = _parse(_pb().BlobProto, stub_bytes, src, "BlobProto")
        return _blob_arrays(buf, [stub], [rec], src, "BlobProto", release)[0]
    except FormatError as e:
        raise _with_hint(e, buf, size, "blob") from None


def read_blobproto(path: PathLike) -> np.ndarray:
    """Read a ``.binaryproto`` (one ``BlobProto``, e.g. a mean file) as a float32 array
    of its Caffe shape (mean files from ``compute_image_mean``: 1 x C x H x W)."""
    src = os.fspath(path)
    with _mapped(path) as (buf, size, release):
        if size == 0:
            raise FormatError(f"{src}: expected a BlobProto, found an empty file")
        return _parse_blob_buffer(buf, size, src, release)


def parse_blobproto(data, source: str = "<bytes>") -> np.ndarray:
    """:func:`read_blobproto` for a bytes-like object already in memory."""
    buf, size = _as_buffer(data)
    if size == 0:
        raise FormatError(f"{source}: expected a BlobProto, found no bytes")
    return _parse_blob_buffer(buf, size, source, None)


def blob_to_array(blob: caffe_pb2.BlobProto | np.ndarray) -> np.ndarray:
    """A BlobProto's values as a new float32 array of its Caffe shape (see
    :func:`blob_shape`); ``double_data`` wins over ``data`` as in Caffe. An array (e.g.
    an item of :attr:`SolverStateData.history`) is returned as float32."""
    if not _is_message(blob, "caffe.BlobProto"):
        return _float32(blob)
    data = blob.SerializeToString()
    return _parse_blob_buffer(data, len(data), "BlobProto", None)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


_atomic_file = atomic_write


def _copy_without(msg, numbers: tuple[int, ...]):
    """A copy of ``msg`` without the fields in ``numbers`` (without copying them)."""
    out = type(msg)()
    for fd, value in msg.ListFields():
        if fd.number in numbers:
            continue
        if _is_repeated(fd):
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                container = getattr(out, fd.name)
                for v in value:
                    container.add().CopyFrom(v)
            else:
                getattr(out, fd.name).extend(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(out, fd.name).CopyFrom(value)
        else:
            setattr(out, fd.name, value)
    return out


def _float32(arr) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array into 1-d; keep Caffe's scalar blobs 0-d.
    return np.asarray(arr, dtype="<f4", order="C")


def _blob_pieces(arr: np.ndarray, stub: caffe_pb2.BlobProto | None, legacy: bool = False,
                 diff: np.ndarray | None = None):
    """Serialized BlobProto of a float32 array as a list of byte pieces: legacy dims
    (fields 1-4) if the stub uses them with the same shape, then packed ``data`` (5),
    ``diff`` (6) if given, then ``shape`` (7), as Caffe's ``Blob::ToProto`` +
    ``SerializeToOstream`` emit."""
    head = b""
    tail = b""
    use_legacy = legacy
    if stub is not None and not legacy:
        use_legacy = is_legacy_blob(stub) and blob_shape(stub) == arr.shape
    if use_legacy:
        dims = _pb().BlobProto()
        if stub is not None and not legacy:
            for n in ("num", "channels", "height", "width"):
                if stub.HasField(n):
                    setattr(dims, n, getattr(stub, n))
        else:
            full = (1,) * (4 - arr.ndim) + arr.shape
            dims.num, dims.channels, dims.height, dims.width = full
        head = dims.SerializeToString()
    elif arr.ndim:
        # Blob::ToProto only touches `shape` while adding dims: a 0-d (scalar) blob,
        # e.g. PReLU channel_shared, is written without a shape field at all.
        shaped = _pb().BlobProto()
        shaped.shape.dim.extend(arr.shape)
        tail = shaped.SerializeToString()
    pieces = [head]
    for num, values in ((_BLOB_DATA, arr), (_BLOB_DIFF, diff)):
        if values is not None and values.size:  # an empty packed field is not written
            pieces += [_key_bytes(num, _LEN) + _varint_bytes(values.nbytes),
                       memoryview(values.reshape(-1)).cast("B")]
    pieces.append(tail)
    return pieces


def _check_blob_has_data(blob, where: str) -> None:
    count = 1
    for d in blob_shape(blob):
        count *= d
    if count != (len(blob.double_data) or len(blob.data)):
        raise ValueError(f"{where}: blob of shape {blob_shape(blob)} has "
                         f"{len(blob.double_data) or len(blob.data)} values (a data-free stub "
                         "from read_caffemodel? pass its arrays as blobs_per_layer)")


def _layer_pieces(layer, arrays, blob_field: int, where: str, diffs=None):
    """Serialized layer as byte pieces; blobs from ``arrays`` (and ``diffs``) if given
    (stubs in the layer provide the dims form), else the layer's own BlobProtos."""
    nested = blob_field == _V1_BLOBS and layer.HasField("layer") and len(layer.layer.blobs) > 0
    if arrays is None:
        blobs = list(layer.blobs) + (list(layer.layer.blobs) if nested else [])
        for j, blob in enumerate(blobs):
            _check_blob_has_data(blob, f"{where}, blob {j}")
        return [layer.SerializeToString()]
    stubs = list(layer.blobs)
    pieces = []
    exclude: tuple[int, ...] = (blob_field,)
    if nested:
        # A V0 layer keeps its blobs in the nested V0LayerParameter (field 1, which is
        # serialized first): the arrays after this layer's own blobs go back there.
        own = min(len(stubs), len(arrays))
        v0 = _layer_pieces(layer.layer, arrays[own:], _V0_BLOBS, f"{where} V0 layer")
        pieces += [_key_bytes(_V1_V0LAYER, _LEN) + _varint_bytes(_nbytes(v0)), *v0]
        arrays = arrays[:own]
        exclude = (blob_field, _V1_V0LAYER)
    stubs = stubs[: len(arrays)]
    rest = _copy_without(layer, exclude).SerializeToString()
    head, tail = _split_at_field(rest, blob_field + 1)
    pieces.append(head)
    if diffs is not None and len(diffs) != len(arrays):
        raise ValueError(f"{where}: {len(arrays)} blobs but {len(diffs)} diffs")
    for j, arr in enumerate(arrays):
        arr = _float32(arr)
        diff = None
        if diffs is not None and diffs[j] is not None:
            diff = _float32(diffs[j])
            if diff.shape != arr.shape:
                raise ValueError(f"{where}, blob {j}: diff shape {diff.shape} != data shape "
                                 f"{arr.shape}")
        blob = _blob_pieces(arr, stubs[j] if j < len(stubs) else None, diff=diff)
        pieces.append(_key_bytes(blob_field, _LEN) + _varint_bytes(_nbytes(blob)))
        pieces += blob
    pieces.append(tail)
    return pieces


def _nbytes(pieces) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in pieces)


def _write_net(f: BinaryIO, net, blobs, v1_blobs, diffs=None) -> None:
    rest = _copy_without(net, (_NET_LAYERS_V1, _NET_LAYER)).SerializeToString()
    head, rest = _split_at_field(rest, _NET_LAYERS_V1 + 1)
    middle, tail = _split_at_field(rest, _NET_LAYER + 1)
    f.write(head)
    groups = ((_NET_LAYERS_V1, net.layers, v1_blobs, _V1_BLOBS, "V1 layers"),
              (_NET_LAYER, net.layer, blobs, _LAYER_BLOBS, "layer"))
    for num, layers, arrays, blob_field, kind in groups:
        if arrays is not None and len(arrays) != len(layers):
            raise ValueError(f"expected arrays for {len(layers)} '{kind}' entries, "
                             f"got {len(arrays)}")
        layer_diffs = diffs if num == _NET_LAYER else None
        if layer_diffs is not None and (arrays is None or len(layer_diffs) != len(layers)):
            raise ValueError(f"expected diffs for {len(layers)} 'layer' entries with arrays, "
                             f"got {len(layer_diffs)}")
        for i, layer in enumerate(layers):
            pieces = _layer_pieces(layer, None if arrays is None else arrays[i], blob_field,
                                   f"{kind} #{i} '{layer.name}'",
                                   None if layer_diffs is None else layer_diffs[i])
            f.write(_key_bytes(num, _LEN) + _varint_bytes(_nbytes(pieces)))
            for p in pieces:
                f.write(p)
        if num == _NET_LAYERS_V1:
            f.write(middle)
    f.write(tail)


def write_caffemodel(
    path: PathLike,
    net_param: caffe_pb2.NetParameter | CaffeModel,
    blobs_per_layer: Sequence[Sequence[np.ndarray]] | None = None,
    v1_blobs_per_layer: Sequence[Sequence[np.ndarray]] | None = None,
    *,
    diffs_per_layer: Sequence[Sequence[np.ndarray | None]] | None = None,
) -> None:
    """Write a ``.caffemodel`` byte-compatible with Caffe's ``Net::ToProto`` +
    ``SerializeToOstream``, streaming layer by layer, atomically.

    ``blobs_per_layer[i]`` are the arrays of ``net_param.layer[i]`` (float32, written as
    ``BlobProto{data (packed), shape}``; a layer stub with legacy 4-D dims of the same
    shape keeps them, as ``upgrade_net_proto_binary`` does); ``v1_blobs_per_layer``
    likewise for V1 ``layers``. ``None`` writes the messages' own BlobProtos. A
    :class:`CaffeModel` may be passed instead of the three arguments.
    ``diffs_per_layer`` (aligned with ``blobs_per_layer``) adds ``diff`` to each blob, as
    Caffe's ``snapshot_diff`` does. Unknown protobuf fields of the net and of layers with
    replaced blobs are dropped.
    """
    if isinstance(net_param, CaffeModel):
        if blobs_per_layer is not None or v1_blobs_per_layer is not None:
            raise ValueError("pass either a CaffeModel or net_param + blobs_per_layer")
        model = net_param
        net_param, blobs_per_layer, v1_blobs_per_layer = model.net, model.blobs, model.v1_blobs
    if v1_blobs_per_layer is None and blobs_per_layer is not None and not net_param.layer \
            and net_param.layers and len(blobs_per_layer) == len(net_param.layers):
        blobs_per_layer, v1_blobs_per_layer = None, blobs_per_layer  # V1-only net
    with _atomic_file(path) as f:
        _write_net(f, net_param, blobs_per_layer, v1_blobs_per_layer, diffs_per_layer)


def write_net_module(path: PathLike, module, net_param: caffe_pb2.NetParameter, *,
                     with_diff: bool = False) -> None:
    """Write a built net's parameters as Caffe's ``Net::ToProto`` + ``WriteProtoToBinaryFile``
    (what ``net.save()`` / solver snapshots write): the net ``name`` and, for every
    instantiated layer (Split layers included), its LayerParameter with ``phase`` set and
    its blobs (``BlobProto{data, [diff], shape}``).

    ``module`` is duck-typed: ``module.nodes`` (each with ``.param`` and ``.index``),
    ``module.phase`` and ``module.layer_blobs(index)`` (tensors; ``.grad`` gives the diff).
    """
    out = type(net_param)(name=net_param.name)  # ToProto sets only the name
    blobs, diffs = [], []
    for node in module.nodes:
        layer = out.layer.add()
        layer.CopyFrom(_copy_without(node.param, (_LAYER_BLOBS,)))
        layer.phase = module.phase
        tensors = list(module.layer_blobs(node.index))
        blobs.append([_tensor_array(t) for t in tensors])
        diffs.append([_tensor_array(t.grad) if t.grad is not None else
                      np.zeros(tuple(t.shape), np.float32) for t in tensors])
    write_caffemodel(path, out, blobs, diffs_per_layer=diffs if with_diff else None)


def _tensor_array(t) -> np.ndarray:
    """A torch tensor (or array) as a float32 numpy array on the CPU."""
    if hasattr(t, "detach"):
        t = t.detach().to("cpu").float().numpy()
    return _float32(t)


def write_net_binary(path: PathLike, net_param: caffe_pb2.NetParameter) -> None:
    """Write a ``NetParameter`` (blob data in its BlobProtos) as Caffe's
    ``WriteProtoToBinaryFile`` would, streaming layer by layer, atomically."""
    with _atomic_file(path) as f:
        _write_net(f, net_param, None, None)


def write_solverstate(path: PathLike, state: SolverStateData | caffe_pb2.SolverState) -> None:
    """Write a ``.solverstate`` as Caffe's ``SnapshotSolverStateToBinaryProto``: iter,
    learned_net, history blobs (shape + packed data), current_step; atomically."""
    with _atomic_file(path) as f:
        if _is_message(state, "caffe.SolverState"):
            f.write(state.SerializeToString())
            return
        head = _pb().SolverState(iter=state.iter, learned_net=state.learned_net)
        f.write(head.SerializeToString())
        for arr in state.history:
            pieces = _blob_pieces(_float32(arr), None)
            f.write(_key_bytes(_STATE_HISTORY, _LEN) + _varint_bytes(_nbytes(pieces)))
            for p in pieces:
                f.write(p)
        f.write(_pb().SolverState(current_step=state.current_step).SerializeToString())


def write_blobproto(path: PathLike, array, legacy_dims: bool = False) -> None:
    """Write one array as a ``.binaryproto`` BlobProto{shape, data}, atomically.

    ``legacy_dims=True`` writes num/channels/height/width instead of ``shape`` (what
    Caffe's ``compute_image_mean`` writes; arrays of up to 4 dims, left-padded with 1).
    """
    arr = _float32(array)
    if legacy_dims and arr.ndim > 4:
        raise ValueError(f"legacy_dims needs at most 4 dims, got shape {arr.shape}")
    with _atomic_file(path) as f:
        for p in _blob_pieces(arr, None, legacy=legacy_dims):
            f.write(p)


def array_to_blob(arr) -> caffe_pb2.BlobProto:
    """A ``BlobProto{shape, data}`` holding ``arr`` as float32."""
    pieces = _blob_pieces(_float32(arr), None)
    return _pb().BlobProto.FromString(b"".join(bytes(p) for p in pieces))
