"""Caffe's ``Datum``: one image (or feature array) and its label, as stored in a Caffe LMDB.

A Datum holds either raw pixels (``data``: uint8 bytes in C x H x W order, or ``float_data``) with
``channels/height/width``, or an encoded image file (``encoded: true``, ``data`` = PNG/JPEG bytes, no dims).
Encoded Datums are decoded as Caffe decodes them, with OpenCV ``imdecode``, so colour images come out in
**BGR** channel order (Caffe channel ``c`` is RGB channel ``2 - c``).

Every function here returns or takes C x H x W arrays; errors are :class:`~netspec.errors.DataError` naming
the record (LMDB key, file, list line) they are about.
"""
from __future__ import annotations

import os
import re
import struct
from typing import List, Optional, Tuple, Union

import cv2
import numpy as np
from google.protobuf.message import DecodeError

from ..errors import DataError
from ..proto import caffe_pb2

__all__ = [
    "parse_datum", "decode_datum", "datum_to_array", "array_to_datum", "image_to_datum",
    "encoded_datum", "decode_image", "encode_image", "read_image", "read_image_to_datum",
    "read_image_list", "key_str",
]

# OpenCV imread/imdecode flags as Caffe uses them (CV_LOAD_IMAGE_ANYCOLOR / COLOR / GRAYSCALE).
_NATIVE, _COLOR, _GRAY = cv2.IMREAD_ANYCOLOR, cv2.IMREAD_COLOR, cv2.IMREAD_GRAYSCALE


def key_str(key) -> str:
    """A record key for messages (LMDB keys are bytes)."""
    if key is None:
        return "<no key>"
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key).decode("utf-8", errors="backslashreplace")
    return str(key)


def _where(key) -> str:
    return f"record '{key_str(key)}'" if key is not None else "Datum"


def parse_datum(value: Union[bytes, "caffe_pb2.Datum"], key=None) -> "caffe_pb2.Datum":
    """A ``Datum`` from its serialized bytes (or the message itself)."""
    if isinstance(value, caffe_pb2.Datum):
        return value
    try:
        return caffe_pb2.Datum.FromString(bytes(value))
    except DecodeError as e:
        raise DataError(f"{_where(key)}: {len(value)} bytes that do not parse as a caffe Datum ({e}); "
                        "is this a Caffe image database?") from None


def _hwc_to_chw(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img[None]
    return np.ascontiguousarray(img.transpose(2, 0, 1))


# OpenCV allocates the whole image as soon as it has read the header, before it finds the pixel data missing: a
# 30-byte PPM claiming 30000 x 30000 pixels reserves 2.6 GB. Headers we can read cheaply are checked first: no
# real PNG/JPEG/... packs more than this many pixels per byte (deflate peaks near 1032:1, times 8 for 1-bit
# pixels; a JPEG needs a few bits per 8x8 block), and images up to _PIXELS_ALWAYS_OK pixels always pass. (libjpeg
# "decodes" a truncated JPEG, filling what is missing with grey: a 200-byte file claiming 4096 x 4096 pixels
# would otherwise become a 50 MB image, 400 MB once a Data layer has made a float batch of two.)
_PIXELS_PER_BYTE = 16384
_PIXELS_ALWAYS_OK = 1 << 20
#: Whatever its size in bytes, no image with more pixels is decoded (a 109 KB 1-bit PNG can declare 30000 x 30000,
#: which deflate really can hold: 2.7 GB decoded, far more once batched as floats). Settable with
#: NETSPEC_MAX_IMAGE_PIXELS (default 2^27, e.g. 16384 x 8192).
MAX_IMAGE_PIXELS = int(os.environ.get("NETSPEC_MAX_IMAGE_PIXELS", str(1 << 27)))
_PNM = re.compile(rb"P[1-6]\s+(?:#[^\n]*\n\s*)*(\d+)\s+(?:#[^\n]*\n\s*)*(\d+)")
_PFM = re.compile(rb"P[Ff]\s+(\d+)\s+(\d+)")
_PAM_W, _PAM_H = re.compile(rb"\nWIDTH\s+(\d+)"), re.compile(rb"\nHEIGHT\s+(\d+)")
_HDR = re.compile(rb"\n\s*[-+][XY]\s+(\d+)\s+[-+][XY]\s+(\d+)")
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _declared_pixels(raw: bytes) -> Optional[int]:
    """Width x height as the image header states it, for the formats whose header is cheap to read (PNG, JPEG,
    BMP, PNM/PAM/PFM, Sun raster, Radiance HDR); None when unknown."""
    head = raw[:4096]
    dims = None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        dims = struct.unpack(">II", head[16:24])
    elif head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(raw) and raw[i] == 0xFF:
            marker = raw[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in _JPEG_SOF:
                dims = struct.unpack(">HH", raw[i + 5:i + 9])
                break
            if marker == 0xDA:  # scan data before any frame header
                break
            i += 2 + struct.unpack(">H", raw[i + 2:i + 4])[0]
    elif head[:2] == b"BM" and len(head) >= 26:
        dims = struct.unpack("<ii", head[18:26])
    elif head[:4] == b"\x59\xa6\x6a\x95" and len(head) >= 12:
        dims = struct.unpack(">II", head[4:12])
    elif head[:2] == b"P7":
        w, h = _PAM_W.search(head), _PAM_H.search(head)
        dims = (int(w.group(1)), int(h.group(1))) if w and h else None
    elif head[:1] == b"P":
        m = _PNM.match(head) or _PFM.match(head)
        dims = (int(m.group(1)), int(m.group(2))) if m else None
    elif head[:2] == b"#?":
        m = _HDR.search(head)
        dims = (int(m.group(1)), int(m.group(2))) if m else None
    if dims is None:
        return None
    return abs(int(dims[0])) * abs(int(dims[1]))


def _png_chunk_overrun(data: bytes) -> Optional[str]:
    """The first PNG chunk whose length field runs past the end of ``data`` (OpenCV's PNG reader allocates what
    the field says before it reads: 576 MB for a 164-byte file), as a message; None when all fit."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if length > len(data) - pos - 12:
            name = kind.decode("ascii", "replace")
            return (f"PNG chunk '{name}' at byte {pos} claims {length} bytes, only {max(0, len(data) - pos - 12)} "
                    "follow")
        if kind == b"IEND":
            break
        pos += 12 + length
    return None


def check_image_file(path: str, what: str) -> None:
    """Refuse, from its header alone, an image file that would decode to more pixels than netspec accepts (see
    :data:`MAX_IMAGE_PIXELS`) or than its size can hold: call before any ``cv2.imread``."""
    with open(path, "rb") as f:
        head = f.read(1 << 17)
    _check_declared_size(head, os.path.getsize(path), what)


def _check_declared_size(head: bytes, size: int, what: str) -> None:
    """Refuse an image whose header claims far more pixels than ``size`` bytes can encode (see above), or, for a
    complete PNG in memory, a chunk longer than the data."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == size:
        overrun = _png_chunk_overrun(head)
        if overrun:
            raise DataError(f"{what} of {size} bytes cannot be decoded: {overrun}; it is truncated or corrupt "
                            "(not handed to OpenCV, which would allocate what the chunk claims)")
    pixels = _declared_pixels(head)
    if pixels is not None and pixels > MAX_IMAGE_PIXELS:
        raise DataError(f"{what}: its header declares {pixels} pixels, more than the {MAX_IMAGE_PIXELS} netspec "
                        "decodes (a decompression bomb, or a huge image: raise NETSPEC_MAX_IMAGE_PIXELS to accept it)")
    if pixels is not None and pixels > max(_PIXELS_ALWAYS_OK, _PIXELS_PER_BYTE * size):
        raise DataError(f"{what} of {size} bytes cannot be decoded: its header declares {pixels} pixels, far more "
                        "than so few bytes can hold; it is corrupt (not handed to OpenCV, which would allocate "
                        "memory for all of them)")


def decode_image(buf, key=None, force_color: bool = False, force_gray: bool = False) -> np.ndarray:
    """Decode encoded image bytes as Caffe does (``cv::imdecode``) into an H x W x C uint8 BGR array.

    Default is Caffe's ``DecodeDatumToCVMatNative`` (IMREAD_ANYCOLOR: grey stays 1 channel, colour is BGR);
    ``force_color``/``force_gray`` are ``DecodeDatumToCVMat`` with IMREAD_COLOR / IMREAD_GRAYSCALE.
    """
    if force_color and force_gray:
        raise DataError("cannot set both force_color and force_gray")
    flag = _COLOR if force_color else _GRAY if force_gray else _NATIVE
    data = bytes(buf)
    _check_declared_size(data, len(data), f"{_where(key)}: encoded image")
    raw = np.frombuffer(data, dtype=np.uint8)
    why = ""
    try:
        img = cv2.imdecode(raw, flag) if raw.size else None
    except cv2.error as e:  # OpenCV's own checks (e.g. width above CV_IO_MAX_IMAGE_WIDTH) raise
        img, why = None, f" ({_cv2_reason(e)})"
    if img is None:
        head = data[:8].hex(" ") if data else "nothing"
        raise DataError(f"{_where(key)}: encoded image of {len(data)} bytes (starting {head}) cannot be "
                        f"decoded by OpenCV{why}; the file is corrupt, truncated or in a format OpenCV was built "
                        "without")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return img if img.ndim == 3 else img[:, :, None]


def _cv2_reason(err) -> str:
    """The useful line of a ``cv2.error`` ("OpenCV(4.x) file:line: error: (-215:Assertion failed) what ...")."""
    text = str(err).strip()
    return text.split(" error: ", 1)[-1].splitlines()[0] if text else type(err).__name__


def encode_image(img: np.ndarray, ext: str = "png") -> bytes:
    """Encode an H x W x C (BGR) or H x W uint8 image with ``cv::imencode`` (``.png``, ``.jpg``, ...)."""
    ext = ext if ext.startswith(".") else "." + ext
    try:
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(img))
    except cv2.error as e:
        raise DataError(f"OpenCV cannot encode an image of shape {img.shape} as '{ext}': {_cv2_reason(e)}") from None
    if not ok:
        raise DataError(f"OpenCV cannot encode an image of shape {img.shape} as '{ext}'")
    return buf.tobytes()


def decode_datum(datum, key=None, force_color: bool = False, force_gray: bool = False) -> np.ndarray:
    """The C x H x W array a Datum holds: uint8 for pixel data (raw or decoded), float32 for ``float_data``.

    Encoded images are decoded in BGR order as Caffe's DataTransformer does. Raises DataError naming ``key``
    when the Datum is inconsistent or its image cannot be decoded.
    """
    d = parse_datum(datum, key)
    if d.encoded:
        return _hwc_to_chw(decode_image(d.data, key, force_color, force_gray))
    c, h, w = d.channels, d.height, d.width
    if c <= 0 or h <= 0 or w <= 0:
        raise DataError(f"{_where(key)}: raw Datum has channels={c}, height={h}, width={w}; all must be "
                        "positive (an encoded image needs encoded: true)")
    n = c * h * w
    if len(d.data):
        if len(d.data) != n:
            raise DataError(f"{_where(key)}: raw Datum holds {len(d.data)} data bytes, but "
                            f"channels x height x width = {c}x{h}x{w} = {n}")
        return np.frombuffer(d.data, dtype=np.uint8).reshape(c, h, w)
    if len(d.float_data) != n:
        raise DataError(f"{_where(key)}: Datum holds {len(d.float_data)} float_data values and no data bytes, "
                        f"but channels x height x width = {c}x{h}x{w} = {n}")
    return np.asarray(d.float_data, dtype=np.float32).reshape(c, h, w)


def datum_to_array(datum, key=None) -> np.ndarray:
    """pycaffe's ``caffe.io.datum_to_array`` (raw Datums; encoded ones are decoded, BGR)."""
    return decode_datum(datum, key)


def array_to_datum(arr: np.ndarray, label: Optional[int] = None) -> "caffe_pb2.Datum":
    """pycaffe's ``caffe.io.array_to_datum``: a C x H x W array; uint8 goes to ``data``, anything else to
    ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise DataError(f"array_to_datum needs a 3-D C x H x W array, got shape {arr.shape}")
    d = caffe_pb2.Datum()
    d.channels, d.height, d.width = arr.shape
    if arr.dtype == np.uint8:
        d.data = np.ascontiguousarray(arr).tobytes()
    else:
        d.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        d.label = int(label)
    return d


def image_to_datum(img: np.ndarray, label: int = 0) -> "caffe_pb2.Datum":
    """Caffe's ``CVMatToDatum`` + label: an H x W x C (BGR) or H x W uint8 image as a raw Datum.

    Sets the same fields in the same way as Caffe's ``convert_imageset`` (``encoded: false`` explicitly), so
    the serialized bytes match Caffe's."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise DataError(f"image must be uint8, got {img.dtype}")
    chw = _hwc_to_chw(img if img.ndim == 3 else img[:, :, None])
    d = caffe_pb2.Datum()
    d.channels, d.height, d.width = chw.shape
    d.encoded = False
    d.data = chw.tobytes()
    d.label = int(label)
    return d


def encoded_datum(data: bytes, label: int = 0) -> "caffe_pb2.Datum":
    """An encoded Datum (``data`` = image file bytes, ``encoded: true``) as Caffe's ReadFileToDatum."""
    d = caffe_pb2.Datum()
    d.data = bytes(data)
    d.label = int(label)
    d.encoded = True
    return d


def read_image(filename, height: int = 0, width: int = 0, is_color: bool = True,
               where: str = "") -> np.ndarray:
    """Caffe's ``ReadImageToCVMat``: ``cv::imread`` (COLOR -> BGR, or GRAYSCALE) then, if both ``height``
    and ``width`` are positive, ``cv::resize`` to width x height (bilinear). Returns H x W x C uint8.

    ``where`` prefixes the error (e.g. ``"list.txt:12: "``)."""
    path = os.fspath(filename)
    if not os.path.isfile(path):
        raise DataError(f"{where}image file '{path}' not found (working directory {os.getcwd()})")
    flag = _COLOR if is_color else _GRAY
    check_image_file(path, f"{where}image file '{path}'")
    why = ""
    try:
        img = cv2.imread(path, flag)
        if img is None:  # imread cannot open some paths (non-ASCII on Windows): decode the bytes instead
            with open(path, "rb") as f:
                raw = np.frombuffer(f.read(), dtype=np.uint8)
            img = cv2.imdecode(raw, flag) if raw.size else None
    except cv2.error as e:
        img, why = None, f": {_cv2_reason(e)}"
    if img is None:
        raise DataError(f"{where}image file '{path}' cannot be decoded by OpenCV (corrupt, truncated "
                        f"or not an image){why}")
    if height > 0 and width > 0:
        img = cv2.resize(img, (int(width), int(height)))
    return img if img.ndim == 3 else img[:, :, None]


def _match_ext(filename: str, enc: str) -> bool:
    p = filename.rfind(".")
    ext = filename[p + 1:] if p >= 0 else filename
    ext, enc = ext.lower(), enc.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def read_image_to_datum(filename, label: int, height: int = 0, width: int = 0, is_color: bool = True,
                        encoding: str = "", where: str = "") -> "caffe_pb2.Datum":
    """Caffe's ``ReadImageToDatum``: raw pixels, or (``encoding`` given) encoded bytes.

    With an encoding, the file's own bytes are stored when no resize is asked, the colour mode already fits
    and its extension matches the encoding (as Caffe); otherwise the image is re-encoded with OpenCV."""
    img = read_image(filename, height, width, is_color, where)
    if encoding:
        if ((img.shape[2] == 3) == is_color and not height and not width
                and _match_ext(os.fspath(filename), encoding)):
            with open(filename, "rb") as f:
                return encoded_datum(f.read(), label)
        return encoded_datum(encode_image(img, encoding), label)
    return image_to_datum(img, label)


def list_file_lines(path) -> List[Tuple[int, str]]:
    """``(line number, line)`` of every non-blank line of a list file (newline dropped), as the data layers read
    them; a missing or empty file is a DataError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"image list file '{path}' not found (working directory {os.getcwd()})")
    with open(path, "r", encoding="utf-8", errors="surrogateescape") as f:
        out = [(n, line.rstrip("\r\n")) for n, line in enumerate(f, 1) if line.strip()]
    if not out:
        raise DataError(f"image list file '{path}' is empty")
    return out


def read_image_list(path) -> List[Tuple[str, int, int]]:
    """An image list file as Caffe's ImageData layer and convert_imageset read it: one ``<path> <label>``
    per line, split at the LAST space (paths may contain spaces). Returns ``(path, label, line number)``.

    Blank lines are skipped; a line whose last field is not an integer raises DataError naming the line.
    A line with no space is a path with label 0 (what Caffe's ``atoi`` gives for it)."""
    path = os.fspath(path)
    out = []
    for lineno, line in list_file_lines(path):
        pos = line.rfind(" ")
        if pos < 0:
            out.append((line, 0, lineno))
            continue
        name, lab = line[:pos], line[pos + 1:]
        try:
            label = int(lab)
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected '<image path> <integer label>', got "
                            f"{line!r}") from None
        if not -2 ** 31 <= label < 2 ** 31:  # Datum.label is an int32
            raise DataError(f"{path}:{lineno}: label {label} does not fit Caffe's int32 Datum label "
                            f"(-2147483648 .. 2147483647)")
        out.append((name, label, lineno))
    return out
