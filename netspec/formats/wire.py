"""The protobuf wire format, walked and written by hand for Caffe's large binary files (``binary.py`` is the
public side): a streaming scan that checks every length against the bytes really there before using it, finds
each layer's blobs without parsing their float data, and the few encoders the piecewise writers need."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from netspec.errors import FormatError
from netspec.proto import caffe_pb2

# Protobuf wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _number(message: str, field: str) -> int:
    """A field's number, read from caffe.proto (the one schema), never written here."""
    return getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field].number


_NET_LAYERS_V1 = _number("NetParameter", "layers")  # V1LayerParameter, deprecated
_NET_LAYER = _number("NetParameter", "layer")
_LAYER_NAME = _number("LayerParameter", "name")
_LAYER_BLOBS = _number("LayerParameter", "blobs")
_V1_V0LAYER = _number("V1LayerParameter", "layer")  # V0LayerParameter: "V0" nets
_V1_NAME = _number("V1LayerParameter", "name")
_V1_BLOBS = _number("V1LayerParameter", "blobs")
_V0_NAME = _number("V0LayerParameter", "name")
_V0_BLOBS = _number("V0LayerParameter", "blobs")
_STATE_HISTORY = _number("SolverState", "history")
_BLOB_DATA, _BLOB_DIFF, _BLOB_DDATA, _BLOB_DDIFF = (_number("BlobProto", f) for f in ("data", "diff", "double_data",
                                                                                       "double_diff"))

_COPY_CHUNK = 1 << 22  # elements copied (and their mmap pages released) per step

# One-byte keys of unpacked repeated payload elements (proto2 parsers must accept
# both encodings): key byte -> (payload kind or None to drop, record size).
_UNPACKED_KEYS = {
    (_BLOB_DATA << 3) | _I32: ("f", 5),
    (_BLOB_DIFF << 3) | _I32: (None, 5),
    (_BLOB_DDATA << 3) | _I64: ("d", 9),
    (_BLOB_DDIFF << 3) | _I64: (None, 9),
}


def _error(src: str, offset: int, where: str, expected: str, found: str) -> FormatError:
    place = f" ({where})" if where else ""
    return FormatError(f"{src}: byte {offset}{place}: expected {expected}, found {found}")


def _read_varint(buf, pos: int, end: int, src: str, where: str, what: str) -> tuple[int, int]:
    start = pos
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _error(src, start, where, what,
                         f"the end of the data after {pos - start} byte(s) of an unterminated "
                         "varint (truncated file?)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _error(src, start, where, what, "a varint longer than 10 bytes")


def _next_field(buf, pos: int, end: int, src: str, where: str):
    """Decode the field starting at ``pos`` of the message ending at ``end``; return
    ``(number, wire_type, field_start, value_start, value_end)``. Every length is
    checked against the bytes really left before it is used."""
    fstart = pos
    key, pos = _read_varint(buf, pos, end, src, where, "a protobuf field key")
    num, wt = key >> 3, key & 7
    if num == 0:
        raise _error(src, fstart, where, "a protobuf field key (field number >= 1)",
                     f"key {key:#x} with field number 0 (not a protobuf message?)")
    if wt == _VARINT:
        _, vend = _read_varint(buf, pos, end, src, where, f"a varint value for field {num}")
        return num, wt, fstart, pos, vend
    if wt == _LEN:
        length, vstart = _read_varint(buf, pos, end, src, where, f"the length of field {num}")
        if length > end - vstart:
            raise _error(src, fstart, where, f"field {num} of {length} bytes",
                         f"only {end - vstart} byte(s) left in the enclosing message "
                         "(truncated or corrupt file)")
        return num, wt, fstart, vstart, vstart + length
    if wt in (_I64, _I32):
        size = 8 if wt == _I64 else 4
        if size > end - pos:
            raise _error(src, fstart, where, f"a {size}-byte value for field {num}",
                         f"only {end - pos} byte(s) left (truncated file?)")
        return num, wt, fstart, pos, pos + size
    kind = {3: "start-group", 4: "end-group"}.get(wt, "invalid")
    raise _error(src, fstart, where, "a protobuf field with wire type 0, 1, 2 or 5",
                 f"wire type {wt} ({kind}) in key {key:#x} for field {num}")


def _iter_fields(buf, pos: int, end: int, src: str, where: str):
    """Yield :func:`_next_field` tuples for every field of ``buf[pos:end]``."""
    while pos < end:
        fld = _next_field(buf, pos, end, src, where)
        yield fld
        pos = fld[4]


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key_bytes(num: int, wt: int) -> bytes:
    return _varint_bytes((num << 3) | wt)


def _len_field(num: int, payload: bytes) -> bytes:
    return _key_bytes(num, _LEN) + _varint_bytes(len(payload)) + payload


@dataclass
class _BlobRecord:
    """Where a blob's payload lies in the buffer: pieces of (offset, count, stride)."""

    offset: int
    floats: list = field(default_factory=list)
    doubles: list = field(default_factory=list)

    def count(self) -> int:
        pieces = self.doubles if self.doubles else self.floats
        return sum(p[1] for p in pieces)


def _unpacked_run(buf, pos: int, end: int, key: int, size: int) -> int:
    """Number of consecutive ``size``-byte records starting at ``pos`` whose first byte
    is ``key`` (an unpacked repeated float/double field)."""
    max_n = (end - pos) // size
    n = 0
    while n < max_n:
        m = min(_COPY_CHUNK, max_n - n)
        keys = np.ndarray((m,), dtype=np.uint8, buffer=buf, offset=pos + n * size, strides=(size,))
        mismatch = np.flatnonzero(keys != key)
        del keys
        if mismatch.size:
            return n + int(mismatch[0])
        n += m
    return n


def _scan_blob(buf, start: int, end: int, src: str, where: str) -> tuple[bytes, _BlobRecord]:
    """Walk one BlobProto; return its stub bytes (all fields but the payloads) and
    where its float / double data lie."""
    rec = _BlobRecord(offset=start)
    kept: list[bytes] = []
    pos = start
    while pos < end:
        unpacked = _UNPACKED_KEYS.get(buf[pos])
        if unpacked is not None:
            kind, size = unpacked
            n = _unpacked_run(buf, pos, end, buf[pos], size)
            if n == 0:
                raise _error(src, pos, where,
                             f"a {size - 1}-byte blob value after key {buf[pos]:#x}",
                             f"only {end - pos - 1} byte(s) left (truncated file?)")
            if kind == "f":
                rec.floats.append((pos + 1, n, size))
            elif kind == "d":
                rec.doubles.append((pos + 1, n, size))
            pos += n * size
            continue
        num, wt, fstart, vstart, vend = _next_field(buf, pos, end, src, where)
        pos = vend
        if num in (_BLOB_DATA, _BLOB_DIFF, _BLOB_DDATA, _BLOB_DDIFF):
            elem, single_wt = (4, _I32) if num in (_BLOB_DATA, _BLOB_DIFF) else (8, _I64)
            name = {5: "data", 6: "diff", 8: "double_data", 9: "double_diff"}[num]
            if wt == _LEN:
                if (vend - vstart) % elem:
                    raise _error(src, fstart, where,
                                 f"packed '{name}' of a multiple of {elem} bytes",
                                 f"{vend - vstart} bytes")
                piece = (vstart, (vend - vstart) // elem, elem)
            elif wt == single_wt:  # unpacked element with a non-canonical key
                piece = (vstart, 1, elem)
            else:
                raise _error(src, fstart, where,
                             f"'{name}' as packed (wire type 2) or fixed{elem * 8} values",
                             f"wire type {wt}")
            if num == _BLOB_DATA:
                rec.floats.append(piece)
            elif num == _BLOB_DDATA:
                rec.doubles.append(piece)
        else:
            kept.append(bytes(buf[fstart:vend]))
    return b"".join(kept), rec


def _scan_layer(buf, start: int, end: int, src: str, index: int, v1: bool):
    """Walk one LayerParameter (or V1LayerParameter); return the layer bytes with blob
    payloads removed and the blob records (for V1: own blobs, then nested V0 blobs)."""
    name_field, blob_field = (_V1_NAME, _V1_BLOBS) if v1 else (_LAYER_NAME, _LAYER_BLOBS)
    kind = "V1 layers" if v1 else "layer"
    name = ""
    where = f"{kind} #{index}"
    kept: list[bytes] = []
    own: list[_BlobRecord] = []
    nested: list[_BlobRecord] = []
    for num, wt, fstart, vstart, vend in _iter_fields(buf, start, end, src, where):
        if wt != _LEN:
            kept.append(bytes(buf[fstart:vend]))
        elif num == blob_field:
            stub, rec = _scan_blob(buf, vstart, vend, src, f"{where} '{name}', blob {len(own)}")
            own.append(rec)
            kept.append(_len_field(blob_field, stub))
        elif v1 and num == _V1_V0LAYER:
            v0_kept: list[bytes] = []
            for n2, w2, f2, vs2, ve2 in _iter_fields(buf, vstart, vend, src, f"{where} V0 layer"):
                if n2 == _V0_BLOBS and w2 == _LEN:
                    stub, rec = _scan_blob(buf, vs2, ve2, src,
                                           f"{where} '{name}' V0 layer, blob {len(nested)}")
                    nested.append(rec)
                    v0_kept.append(_len_field(_V0_BLOBS, stub))
                else:
                    if n2 == _V0_NAME and w2 == _LEN and not name:
                        name = bytes(buf[vs2:ve2]).decode("utf-8", "replace")
                    v0_kept.append(bytes(buf[f2:ve2]))
            kept.append(_len_field(_V1_V0LAYER, b"".join(v0_kept)))
        else:
            if num == name_field:
                name = bytes(buf[vstart:vend]).decode("utf-8", "replace")
                where = f"{kind} #{index} '{name}'"
            kept.append(bytes(buf[fstart:vend]))
    return b"".join(kept), own + nested


def _looks_like(buf, size: int, expected: str) -> str:
    """A hint about what a file that is not the ``expected`` protobuf ("net", "state",
    "blob") might be."""
    head = bytes(buf[: min(size, 512)])
    if head.startswith(b"\x89HDF"):
        return " (this is an HDF5 file: .caffemodel.h5 / .solverstate.h5 are not supported)"
    if head.startswith(b"\x93NUMPY") or head.startswith(b"PK\x03\x04"):
        return " (this is a numpy .npy/.npz file)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return " (the file looks like text: use netspec.formats.prototxt for .prototxt files)"
    # Caffe-written files start with field 1: NetParameter.name is a string (key 0x0a);
    # SolverState.iter and BlobProto.num are varints (key 0x08).
    if head[:1] == b"\x08" and expected == "net":
        return " (it starts like a .solverstate or .binaryproto, not a .caffemodel)"
    if head[:1] == b"\x0a" and expected != "net":
        return " (it starts like a .caffemodel)"
    return ""


def _with_hint(err: FormatError, buf, size: int, expected: str) -> FormatError:
    hint = _looks_like(buf, size, expected)
    return FormatError(str(err) + hint) if hint else err


def _scan_net(buf, size: int, src: str):
    pieces: list[bytes] = []
    layer_recs: list[list[_BlobRecord]] = []
    v1_recs: list[list[_BlobRecord]] = []
    layer_spans: list[tuple[int, bytes]] = []  # (file offset, filtered bytes) for diagnostics
    for num, wt, fstart, vstart, vend in _iter_fields(buf, 0, size, src, "NetParameter"):
        if wt == _LEN and num in (_NET_LAYER, _NET_LAYERS_V1):
            v1 = num == _NET_LAYERS_V1
            recs_list = v1_recs if v1 else layer_recs
            filtered, recs = _scan_layer(buf, vstart, vend, src, len(recs_list), v1)
            recs_list.append(recs)
            layer_spans.append((fstart, filtered))
            pieces.append(_len_field(num, filtered))
        else:
            pieces.append(bytes(buf[fstart:vend]))
    return b"".join(pieces), layer_recs, v1_recs, layer_spans


def _split_at_field(data: bytes, number: int) -> tuple[bytes, bytes]:
    """Split a serialized message before its first field numbered >= ``number``
    (protobuf serializes known fields in field-number order)."""
    for num, _wt, fstart, _vs, _ve in _iter_fields(data, 0, len(data), "<serialized>", ""):
        if num >= number:
            return data[:fstart], data[fstart:]
    return data, b""
