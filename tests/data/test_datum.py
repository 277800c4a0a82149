"""Datum encode/decode: raw uint8, float_data, encoded PNG/JPEG (OpenCV, BGR as Caffe), force_color/gray."""
import cv2
import numpy as np
import pytest

from netspec.data import datum as D
from netspec.errors import DataError
from netspec.proto import caffe_pb2


def test_raw_uint8_round_trip():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    d = D.array_to_datum(a, label=4)
    back = D.parse_datum(d.SerializeToString())
    assert (back.channels, back.height, back.width, back.label) == (3, 5, 7, 4)
    out = D.decode_datum(d.SerializeToString(), key=b"k")
    assert out.dtype == np.uint8 and np.array_equal(out, a)


def test_float_data_round_trip():
    a = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    d = D.array_to_datum(a, label=1)
    assert len(d.data) == 0 and len(d.float_data) == a.size
    out = D.decode_datum(d)
    assert out.dtype == np.float32 and np.array_equal(out, a)


def test_image_to_datum_fields_as_convert_imageset():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # H x W x C (BGR)
    d = D.image_to_datum(img, 7)
    assert d.HasField("encoded") and not d.encoded  # CVMatToDatum sets encoded=false explicitly
    assert (d.channels, d.height, d.width) == (3, 2, 3)
    assert np.array_equal(D.decode_datum(d), img.transpose(2, 0, 1))
    # field order of Caffe's serializer: channels, height, width, data, label, encoded
    ref = caffe_pb2.Datum(channels=3, height=2, width=3, data=img.transpose(2, 0, 1).tobytes(), label=7,
                          encoded=False)
    assert d.SerializeToString() == ref.SerializeToString()


def test_encoded_png_decodes_bgr_exactly():
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    d = D.encoded_datum(D.encode_image(bgr, "png"), label=2)
    out = D.decode_datum(d.SerializeToString(), key="00000001")
    assert np.array_equal(out, bgr.transpose(2, 0, 1))


def test_golden_png_and_jpeg_bytes(shared_dir):
    imgs = np.load(shared_dir / "golden/data/dbs/images.npz")
    for i in range(5):
        rgb = imgs["png_jpeg_source_rgb_hwc"][i]
        png = D.decode_datum(D.encoded_datum(imgs[f"png_bytes/{i}"].tobytes()), key=i)
        # Caffe channel c = RGB channel 2 - c
        assert np.array_equal(png, rgb[:, :, ::-1].transpose(2, 0, 1))
        jpg = D.decode_datum(D.encoded_datum(imgs[f"jpeg_bytes/{i}"].tobytes()), key=i)
        assert jpg.shape == (3, 8, 9)
        # JPEG of random noise is very lossy (chroma subsampling): per-channel means survive, pixels do not.
        # Exact values depend on the libjpeg build; the golden Data-layer test compares them with Caffe's.
        bgr = rgb[:, :, ::-1].transpose(2, 0, 1).astype(float)
        assert np.abs(jpg.mean((1, 2)) - bgr.mean((1, 2))).max() < 2
        assert np.abs(jpg - bgr).mean() < np.abs(jpg - rgb.transpose(2, 0, 1)).mean()  # BGR order


def test_force_gray_and_force_color():
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    enc = D.encode_image(bgr, "png")
    gray = D.decode_datum(D.encoded_datum(enc), force_gray=True)
    assert gray.shape == (1, 4, 4)
    assert np.array_equal(gray[0], cv2.imdecode(np.frombuffer(enc, np.uint8), cv2.IMREAD_GRAYSCALE))
    g = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    genc = D.encode_image(g, "png")
    native = D.decode_datum(D.encoded_datum(genc))  # ANYCOLOR: grey stays 1 channel
    assert native.shape == (1, 4, 4) and np.array_equal(native[0], g)
    color = D.decode_datum(D.encoded_datum(genc), force_color=True)
    assert color.shape == (3, 4, 4) and all(np.array_equal(color[c], g) for c in range(3))
    with pytest.raises(DataError, match="both force_color and force_gray"):
        D.decode_datum(D.encoded_datum(genc), force_color=True, force_gray=True)


def test_corrupt_encoded_image_names_key():
    d = D.encoded_datum(b"\x89PNG\r\n\x1a\n garbage", label=0)
    with pytest.raises(DataError, match="record '00000042'.*cannot be decoded"):
        D.decode_datum(d.SerializeToString(), key=b"00000042")


def test_inconsistent_raw_datum_names_key():
    d = caffe_pb2.Datum(channels=3, height=2, width=2, data=b"\x00" * 11)
    with pytest.raises(DataError, match="record 'abc'.*11 data bytes.*3x2x2 = 12"):
        D.decode_datum(d, key="abc")
    with pytest.raises(DataError, match="channels=0"):
        D.decode_datum(caffe_pb2.Datum(data=b"x"), key="k")
    with pytest.raises(DataError, match="float_data"):
        D.decode_datum(caffe_pb2.Datum(channels=1, height=1, width=2, float_data=[1.0]), key="k")


def test_not_a_datum_names_key():
    with pytest.raises(DataError, match="record 'bad'.*do not parse as a caffe Datum"):
        D.parse_datum(b"\xff\xff\xff\xff", key=b"bad")


def test_read_image_list(tmp_path):
    p = tmp_path / "list.txt"
    p.write_text("a/b c.png 3\r\n\nx.jpg 0\n")
    assert D.read_image_list(p) == [("a/b c.png", 3, 1), ("x.jpg", 0, 3)]
    p.write_text("ok.png 1\nbad.png one\n")
    with pytest.raises(DataError, match=r"list.txt:2: expected '<image path> <integer label>'"):
        D.read_image_list(p)
    with pytest.raises(DataError, match="not found"):
        D.read_image_list(tmp_path / "missing.txt")


def test_read_image_resize_and_gray(tmp_path):
    img = np.random.default_rng(4).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    f = tmp_path / "i.png"
    cv2.imwrite(str(f), img)
    assert np.array_equal(D.read_image(f), img)
    r = D.read_image(f, 5, 6)
    assert r.shape == (5, 6, 3) and np.array_equal(r, cv2.resize(img, (6, 5)))
    g = D.read_image(f, is_color=False)
    assert g.shape == (10, 12, 1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot be decoded"):
        D.read_image(bad)


def _one_bit_png(w, h):
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (w + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    # A 1-bit PNG packs 8 pixels a byte before deflate: real files reach far past the pixels-per-byte check, so
    # an absolute cap (NETSPEC_MAX_IMAGE_PIXELS) stops them before OpenCV allocates anything.
    from netspec.data import datum
    from netspec.data.fcn_layers import read_bgr
    monkeypatch.setattr(datum, "MAX_IMAGE_PIXELS", 1 << 20)
    png = _one_bit_png(2048, 1024)
    assert len(png) * datum._PIXELS_PER_BYTE > 2048 * 1024      # the per-byte check alone lets it through
    (tmp_path / "bomb.png").write_bytes(png)
    for decode in (lambda: datum.decode_image(png), lambda: datum.read_image(str(tmp_path / "bomb.png")),
                   lambda: read_bgr(tmp_path / "bomb.png")):
        with pytest.raises(DataError, match="header declares 2097152 pixels, more than the 1048576"):
            decode()
    monkeypatch.setattr(datum, "MAX_IMAGE_PIXELS", 1 << 22)
    assert datum.decode_image(png).shape == (1024, 2048, 1)   # under the cap it decodes as before


def test_image_list_label_beyond_int32_is_named_with_its_line(tmp_path):
    from netspec.data.datum import read_image_list
    path = tmp_path / "list.txt"
    path.write_text("a.png 1\nb.png 4294967296\n")
    with pytest.raises(DataError, match=r"list.txt:2: label 4294967296 does not fit Caffe's int32 Datum label"):
        read_image_list(str(path))
