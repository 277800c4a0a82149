"""netspec.formats.binary: caffemodel / solverstate / binaryproto reading and writing.

Reference: files written by real Caffe under ../shared/golden (their values must equal a
plain protobuf parse; writing them back must reproduce the bytes), plus hand-built
encodings Caffe never writes but a proto2 parser must accept (unpacked floats, doubles).
"""

import json
import random
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netspec.formats import binary
from netspec.passes import upgrade
from netspec.errors import FormatError, NetspecError
from netspec.proto import caffe_pb2

SMALL_MODEL = "golden/layers/conv_k3_p1_bias/weights.caffemodel"


# ----------------------------------------------------------------------------- helpers


def _golden_caffemodels(shared_dir):
    files = sorted(shared_dir.glob("golden/**/*.caffemodel"))
    assert len(files) > 100, "expected the golden layer/net/solver caffemodels"
    return files


def _bits(a):
    """Bitwise view for exact comparison (NaN-safe)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.view(np.uint32)


def _reference_arrays(layer):
    """Arrays of a protobuf-parsed layer, decoded independently of netspec.formats.binary."""
    blobs = list(layer.blobs)
    if isinstance(layer, caffe_pb2.V1LayerParameter):
        blobs += list(layer.layer.blobs)
    out = []
    for b in blobs:
        legacy = any(b.HasField(f) for f in ("num", "channels", "height", "width"))
        shape = (b.num, b.channels, b.height, b.width) if legacy else tuple(b.shape.dim)
        values = np.array(b.double_data if len(b.double_data) else b.data, dtype=np.float32)
        out.append(values.reshape(shape))
    return out


def _assert_model_matches_protobuf(model, raw, label=""):
    ref = caffe_pb2.NetParameter.FromString(raw)
    ref_layers = list(ref.layers) + list(ref.layer)
    items = list(model.items())
    assert len(items) == len(ref_layers), label
    for ref_layer, (layer, arrays) in zip(ref_layers, items):
        assert layer.name == ref_layer.name, label
        expected = _reference_arrays(ref_layer)
        assert len(arrays) == len(expected), f"{label}: layer {layer.name}"
        for a, e in zip(arrays, expected):
            assert a.dtype == np.float32 and a.shape == e.shape, f"{label}: {layer.name}"
            assert np.array_equal(_bits(a), _bits(e)), f"{label}: {layer.name}"
    # Metadata: everything but the blob payloads is what protobuf parsed.
    stripped = caffe_pb2.NetParameter()
    stripped.CopyFrom(ref)
    for layer in list(stripped.layer) + list(stripped.layers):
        for b in list(layer.blobs) + (list(layer.layer.blobs)
                                      if isinstance(layer, caffe_pb2.V1LayerParameter) else []):
            for f in ("data", "diff", "double_data", "double_diff"):
                b.ClearField(f)
    assert model.net == stripped, label


def _varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(num, payload):
    return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def _model_boundaries(raw):
    """Byte offsets at which a Caffe-written caffemodel (name + layers) can be cut and
    still be a valid, shorter NetParameter."""
    ref = caffe_pb2.NetParameter.FromString(raw)
    head = caffe_pb2.NetParameter(name=ref.name).SerializeToString() if ref.HasField("name") \
        else b""
    offsets = [len(head)]
    for layer in ref.layer:
        offsets.append(offsets[-1] + len(_field(100, layer.SerializeToString())))
    assert offsets[-1] == len(raw)
    return set(offsets)


# ----------------------------------------------------------------------------- golden reads


def test_golden_caffemodels_match_protobuf(shared_dir):
    for path in _golden_caffemodels(shared_dir):
        raw = path.read_bytes()
        model = binary.read_caffemodel(path)
        _assert_model_matches_protobuf(model, raw, str(path))
        assert model.source == str(path)


def test_read_net_binary_equals_protobuf(shared_dir):
    for path in _golden_caffemodels(shared_dir)[:20]:
        raw = path.read_bytes()
        assert binary.read_net_binary(path) == caffe_pb2.NetParameter.FromString(raw)


def test_fanout_split_caffemodel_keeps_split_layers(shared_dir):
    case = shared_dir / "golden/formats/fanout_split_caffemodel"
    model = binary.read_caffemodel(case / "weights.caffemodel")
    meta = json.loads((case / "meta.json").read_text())
    names = [layer.name for layer in model.net.layer]
    assert names == [layer["name"] for layer in meta["layers"]]
    by_name = {layer.name: (layer, arrays) for layer, arrays in model.items()}
    split, arrays = by_name["data_input_0_split"]
    assert split.type == "Split" and arrays == []
    assert list(split.top) == ["data_input_0_split_0", "data_input_0_split_1"]
    assert list(by_name["conv1_relu1_0_split"][0].top) == [
        "conv1_relu1_0_split_0", "conv1_relu1_0_split_1", "conv1_relu1_0_split_2"]
    for layer in meta["layers"]:
        _, arrays = by_name[layer["name"]]
        assert [list(a.shape) for a in arrays] == layer["param_shapes"]
    # Stubs keep the dims but no payload.
    conv1 = by_name["conv1"][0]
    assert list(conv1.blobs[0].shape.dim) == [4, 3, 3, 3] and len(conv1.blobs[0].data) == 0


def test_weight_layers_upgrades_and_flags_legacy_dims(shared_dir):
    v1 = binary.read_caffemodel(shared_dir / "golden/formats/v1_vgg_like/weights.caffemodel")
    layers = list(upgrade.weight_layers(v1))
    assert layers[0] == ("input", "Input", [])
    name, ltype, blobs = layers[1]
    assert (name, ltype) == ("conv1_1", "Convolution")
    assert [(a.shape, legacy) for a, legacy in blobs] == [((4, 3, 3, 3), True),
                                                         ((1, 1, 1, 4), True)]
    caffe_written = binary.read_caffemodel(
        shared_dir / "golden/formats/fanout_split_caffemodel/weights.caffemodel")
    for _, _, blobs in upgrade.weight_layers(caffe_written):
        assert all(not legacy for _, legacy in blobs)


# ----------------------------------------------------------------------------- round trips


def test_caffemodel_round_trip_is_byte_identical(shared_dir, tmp_path):
    # Caffe-written files (and the caffe_pb2-written V1 file with legacy dims) come back
    # byte for byte: fields in number order, data/shape.dim packed, shape after data, no
    # shape field for 0-d blobs (Blob::ToProto never touches it then).
    out = tmp_path / "out.caffemodel"
    for path in _golden_caffemodels(shared_dir):
        binary.write_caffemodel(out, binary.read_caffemodel(path))
        assert out.read_bytes() == path.read_bytes(), str(path)


def test_write_net_binary_round_trip(shared_dir, tmp_path):
    out = tmp_path / "out.caffemodel"
    for path in _golden_caffemodels(shared_dir)[:20]:
        binary.write_net_binary(out, binary.read_net_binary(path))
        assert out.read_bytes() == path.read_bytes(), str(path)


def test_write_caffemodel_from_arrays(tmp_path):
    net = caffe_pb2.NetParameter(name="tiny")
    net.layer.add(name="data", type="Input", top=["x"])
    net.layer.add(name="conv", type="Convolution", bottom=["x"], top=["y"])
    net.layer.add(name="prelu", type="PReLU", bottom=["y"], top=["z"])
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 3, 3, 3))  # float64: written as float32
    b = np.arange(2, dtype=np.float32)
    s = np.float32(0.25)  # 0-d blob
    empty = np.zeros((0, 4), np.float32)
    path = tmp_path / "m.caffemodel"
    binary.write_caffemodel(path, net, [[], [w, b], [s, empty]])
    ref = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert list(ref.layer[1].blobs[0].shape.dim) == [2, 3, 3, 3]
    assert np.array_equal(np.array(ref.layer[1].blobs[0].data, np.float32),
                          w.astype(np.float32).ravel())
    assert not ref.layer[2].blobs[0].HasField("shape")  # Caffe's 0-d blob form
    model = binary.read_caffemodel(path)
    assert model.blobs[2][0].shape == () and model.blobs[2][0] == np.float32(0.25)
    assert model.blobs[2][1].shape == (0, 4)
    assert np.array_equal(model.blobs[1][0], w.astype(np.float32))
    with pytest.raises(ValueError, match="arrays for 3"):
        binary.write_caffemodel(path, net, [[w, b]])


def test_write_caffemodel_diffs(tmp_path):
    net = caffe_pb2.NetParameter(name="d")
    net.layer.add(name="ip", type="InnerProduct")
    w = np.ones((2, 3), np.float32)
    g = np.full((2, 3), 0.5, np.float32)
    path = tmp_path / "d.caffemodel"
    binary.write_caffemodel(path, net, [[w]], diffs_per_layer=[[g]])
    blob = caffe_pb2.NetParameter.FromString(path.read_bytes()).layer[0].blobs[0]
    assert list(blob.diff) == [0.5] * 6 and list(blob.data) == [1.0] * 6


def test_write_net_module_matches_net_to_proto(tmp_path):
    torch = pytest.importorskip("torch")
    params = {0: [], 1: [torch.arange(6.0).reshape(2, 3), torch.ones(2)]}
    params[1][0].grad = torch.full((2, 3), 2.0)
    nodes = [SimpleNamespace(index=0, param=caffe_pb2.LayerParameter(name="in", type="Input")),
             SimpleNamespace(index=1, param=caffe_pb2.LayerParameter(
                 name="ip", type="InnerProduct", bottom=["x"], top=["y"]))]
    module = SimpleNamespace(nodes=nodes, phase=caffe_pb2.TEST,
                             layer_blobs=lambda i: params[i])
    net_param = caffe_pb2.NetParameter(name="n", force_backward=True)
    path = tmp_path / "n.caffemodel"
    binary.write_net_module(path, module, net_param, with_diff=True)
    got = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert got.name == "n" and not got.HasField("force_backward")  # ToProto: name + layers
    assert [l.phase for l in got.layer] == [caffe_pb2.TEST, caffe_pb2.TEST]
    ip = got.layer[1]
    assert list(ip.blobs[0].data) == [0, 1, 2, 3, 4, 5] and list(ip.blobs[0].diff) == [2.0] * 6
    assert list(ip.blobs[1].diff) == [0.0, 0.0]  # no grad: Caffe writes the zero diff


def test_write_net_binary_refuses_stubs(shared_dir, tmp_path):
    model = binary.read_caffemodel(shared_dir / SMALL_MODEL)
    with pytest.raises(ValueError, match="stub"):
        binary.write_net_binary(tmp_path / "x.caffemodel", model.net)


def test_write_is_atomic(tmp_path):
    path = tmp_path / "m.caffemodel"
    net = caffe_pb2.NetParameter(name="a")
    net.layer.add(name="l1", type="Scale")
    net.layer.add(name="l2", type="Scale")
    binary.write_caffemodel(path, net, [[np.ones(3)], [np.ones(2)]])
    before = path.read_bytes()
    with pytest.raises(Exception):
        # The second layer's array cannot become float32: the write fails midway.
        binary.write_caffemodel(path, net, [[np.zeros(3)], [np.array(["x", "y"])]])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.caffemodel"]


def test_solverstates(shared_dir, tmp_path):
    files = sorted(shared_dir.glob("golden/solvers/*/snapshot/*.solverstate"))
    files += sorted(shared_dir.glob("golden/formats/adam_solverstate/snapshot/*.solverstate"))
    assert len(files) >= 33
    out = tmp_path / "s.solverstate"
    for path in files:
        case = path.parent.parent
        meta = json.loads((case / "meta.json").read_text())
        summary = meta.get("solverstate_iter6") or meta.get("solverstate_iter3")
        raw = path.read_bytes()
        ref = caffe_pb2.SolverState.FromString(raw)
        state = binary.read_solverstate(path)
        it = int(path.stem.rsplit("_", 1)[1])
        assert state.iter == ref.iter == it, str(path)
        assert state.learned_net == ref.learned_net == f"snapshot/snap_iter_{it}.caffemodel"
        assert len(state.history) == summary["history_blobs"], str(path)
        if it == summary["iter"]:
            assert state.current_step == summary["current_step"], str(path)
            assert [list(h.shape) for h in state.history] == summary["history_shapes"]
        assert state.current_step == ref.current_step
        for h, b in zip(state.history, ref.history):
            assert np.array_equal(_bits(h), _bits(np.array(b.data, np.float32)
                                                  .reshape(tuple(b.shape.dim))))
            assert np.array_equal(binary.blob_to_array(h), h)  # arrays pass through
        binary.write_solverstate(out, state)
        assert out.read_bytes() == raw, str(path)
        binary.write_solverstate(out, state.to_proto())
        assert out.read_bytes() == raw, str(path)
        assert binary.SolverStateData.from_proto(ref).iter == it


def test_adam_solverstate_decoded(shared_dir):
    case = shared_dir / "golden/formats/adam_solverstate"
    meta = json.loads((case / "meta.json").read_text())["solverstate_decoded"]
    state = binary.read_solverstate(case / "snapshot/snap_iter_3.solverstate")
    assert (state.iter, state.current_step, len(state.history)) == (
        meta["iter"], meta["current_step"], meta["history_count"])
    decoded = np.load(case / "solverstate_decoded.npz")
    for i, meaning in enumerate(meta["history_index_meaning"]):
        key = meaning.split("key ")[1].rstrip(")")
        assert np.array_equal(state.history[i], decoded[key]), meaning


def test_blobproto_mean_file(shared_dir, tmp_path):
    path = shared_dir / "golden/data/dbs/mean.binaryproto"
    mean = binary.read_blobproto(path)
    ref = caffe_pb2.BlobProto.FromString(path.read_bytes())
    assert mean.shape == (1, 3, 8, 9) and mean.dtype == np.float32
    assert np.array_equal(mean.ravel(), np.array(ref.data, np.float32))
    # compute_image_mean writes legacy num/channels/height/width: reproduced byte for byte.
    out = tmp_path / "mean.binaryproto"
    binary.write_blobproto(out, mean, legacy_dims=True)
    assert out.read_bytes() == path.read_bytes()
    binary.write_blobproto(out, mean)
    blob = caffe_pb2.BlobProto.FromString(out.read_bytes())
    assert list(blob.shape.dim) == [1, 3, 8, 9] and not blob.HasField("num")
    assert np.array_equal(binary.read_blobproto(out), mean)


def test_blob_array_conversions():
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    blob = binary.array_to_blob(a)
    assert list(blob.shape.dim) == [2, 3, 4] and len(blob.data) == 24
    back = binary.blob_to_array(blob)
    assert back.dtype == np.float32 and np.array_equal(back, a)
    legacy = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3, data=range(6))
    assert binary.blob_to_array(legacy).shape == (1, 1, 2, 3)
    assert binary.is_legacy_blob(legacy) and not binary.is_legacy_blob(blob)
    doubles = caffe_pb2.BlobProto(double_data=[1.5, 2.5], data=[9.0, 9.0])
    doubles.shape.dim.append(2)
    assert binary.blob_to_array(doubles).tolist() == [1.5, 2.5]  # double_data wins
    scalar = binary.array_to_blob(np.float32(3.0))
    assert binary.blob_to_array(scalar).shape == ()
    bad = caffe_pb2.BlobProto(data=[1.0, 2.0])
    bad.shape.dim.extend([3])
    with pytest.raises(FormatError, match="3 values for blob shape"):
        binary.blob_to_array(bad)


# ----------------------------------------------------------------------------- encodings


def _blob_unpacked(values, shape, double=False):
    body = _field(7, caffe_pb2.BlobShape(dim=shape).SerializeToString())
    if double:
        body += b"".join(b"\x41" + np.float64(v).tobytes() for v in values)
    else:
        body += b"".join(b"\x2d" + np.float32(v).tobytes() for v in values)
    return body


def test_unpacked_and_double_encodings():
    # Caffe writes packed floats, but a proto2 reader must take unpacked elements, data
    # split over several packed chunks, and double_data (converted to float32).
    values = [0.5, -1.25, 3.0, 7.5, 1e-3, 2.0]
    layer_a = _field(1, b"a") + _field(7, _blob_unpacked(values, [2, 3]))
    layer_b = _field(1, b"b") + _field(7, _blob_unpacked(values, [6], double=True))
    chunks = _field(5, np.float32(values[:2]).tobytes()) + b"\x2d" + \
        np.float32(values[2]).tobytes() + _field(5, np.float32(values[3:]).tobytes())
    layer_c = _field(1, b"c") + _field(7, chunks + _field(7, caffe_pb2.BlobShape(
        dim=[3, 2]).SerializeToString()))
    packed_double = _field(8, np.float64(values).tobytes())
    layer_d = _field(1, b"d") + _field(7, packed_double + _field(7, caffe_pb2.BlobShape(
        dim=[6]).SerializeToString()))
    raw = b"".join(_field(100, layer) for layer in (layer_a, layer_b, layer_c, layer_d))
    model = binary.parse_caffemodel(raw)
    _assert_model_matches_protobuf(model, raw)
    for arrays in model.blobs:
        assert np.array_equal(arrays[0].ravel(), np.float32(values))


def test_v1_and_v0_blob_locations(tmp_path):
    # V1 blobs are field 6 of V1LayerParameter; V0 nets keep them in the nested
    # V0LayerParameter (field 50). Both are found, and written back in place.
    net = caffe_pb2.NetParameter(name="old")
    v1 = net.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    v1.blobs.add().CopyFrom(binary.array_to_blob(np.ones((2, 2))))
    v0 = net.layers.add()
    v0.layer.name = "conv"
    v0.layer.type = "conv"
    v0.layer.blobs.add().CopyFrom(binary.array_to_blob(np.full((1, 1, 2, 2), 3.0)))
    raw = net.SerializeToString()
    model = binary.parse_caffemodel(raw)
    _assert_model_matches_protobuf(model, raw)
    assert [len(b) for b in model.v1_blobs] == [1, 1] and model.blobs == []
    out = tmp_path / "old.caffemodel"
    binary.write_caffemodel(out, model)
    assert out.read_bytes() == raw


def test_large_unpacked_run_is_vectorised():
    n = 300_000
    values = np.linspace(-1, 1, n, dtype=np.float32)
    records = np.empty(n, dtype=[("k", "u1"), ("v", "<f4")])
    records["k"] = 0x2D
    records["v"] = values
    blob = records.tobytes() + _field(7, caffe_pb2.BlobShape(dim=[n]).SerializeToString())
    raw = _field(100, _field(1, b"big") + _field(7, blob))
    start = time.perf_counter()
    model = binary.parse_caffemodel(raw)
    assert time.perf_counter() - start < 2.0
    assert np.array_equal(model.blobs[0][0], values)


# ----------------------------------------------------------------------------- bad input


def test_truncated_files_raise_format_error(shared_dir):
    for rel in (SMALL_MODEL, "golden/formats/fanout_split_caffemodel/weights.caffemodel",
                "golden/nets/fcn8s/weights.caffemodel"):
        raw = (shared_dir / rel).read_bytes()
        boundaries = _model_boundaries(raw)
        rng = random.Random(rel)
        cuts = set(range(0, min(len(raw), 80))) | {len(raw) - k for k in (1, 2, 3, 4, 5, 9)}
        cuts |= {rng.randrange(len(raw)) for _ in range(60)}
        for cut in sorted(cuts):
            data = raw[:cut]
            if cut in boundaries and cut > min(boundaries):
                # A cut between two layers is a valid, shorter net (Caffe would load it).
                model = binary.parse_caffemodel(data)
                assert len(model.net.layer) < len(caffe_pb2.NetParameter.FromString(raw).layer)
                continue
            with pytest.raises(FormatError) as info:
                binary.parse_caffemodel(data, source="cut.caffemodel")
            assert "cut.caffemodel" in str(info.value)
            if cut not in boundaries and cut > 2:
                assert "byte" in str(info.value), str(info.value)


def test_truncated_file_message_names_offset_and_expectation(shared_dir, tmp_path):
    raw = (shared_dir / SMALL_MODEL).read_bytes()
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(raw[: len(raw) - 10])
    with pytest.raises(FormatError) as info:
        binary.read_caffemodel(path)
    msg = str(info.value)
    assert str(path) in msg and "byte " in msg and "expected" in msg and "found" in msg
    with pytest.raises(FormatError):
        binary.read_net_binary(path)


def test_random_bytes_raise_format_error():
    rng = np.random.default_rng(1234)
    for n in (1, 2, 3, 7, 16, 100, 1000, 65536):
        for _ in range(20):
            data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            with pytest.raises(FormatError):
                binary.parse_caffemodel(data)
            # A few random bytes can be a valid tiny SolverState (b"\x08\x05" is iter 5).
            try:
                state = binary.parse_solverstate(data)
            except FormatError:
                continue
            assert n < 16 and isinstance(state, binary.SolverStateData)


def test_huge_length_fields_fail_fast_without_allocating(tmp_path):
    claims = [
        _varint((100 << 3) | 2) + _varint(2 ** 34) + b"abc",  # a 16 GiB layer
        _field(100, _field(1, b"x") + _varint((7 << 3) | 2) + _varint(2 ** 31) + b"\x2a"),
        # a blob whose packed data claims 4 GB inside a small layer
        _field(100, _field(7, _varint((5 << 3) | 2) + _varint(2 ** 32) + b"\0" * 8)),
        # shape claims 10^12 values, 2 are present
        _field(100, _field(7, _field(5, b"\0" * 8) + _field(7, caffe_pb2.BlobShape(
            dim=[10 ** 6, 10 ** 6]).SerializeToString()))),
    ]
    for data in claims:
        path = tmp_path / "tiny.caffemodel"
        path.write_bytes(data)
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(FormatError):
            binary.read_caffemodel(path)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert elapsed < 0.5 and peak < 1 << 20, (elapsed, peak)


def test_wrong_file_kinds_are_named(shared_dir, tmp_path):
    text = tmp_path / "net.caffemodel"
    text.write_text('name: "x"\nlayer { name: "a" type: "ReLU" }\n')
    with pytest.raises(FormatError, match="looks like text"):
        binary.read_caffemodel(text)
    for state in sorted(shared_dir.glob("golden/solvers/*/snapshot/*_6.solverstate")):
        with pytest.raises(FormatError, match="starts like a .solverstate"):
            binary.read_caffemodel(state)
        with pytest.raises(FormatError, match="starts like a .solverstate"):
            binary.read_net_binary(state)
    with pytest.raises(FormatError, match="starts like a .solverstate or .binaryproto"):
        binary.read_caffemodel(shared_dir / "golden/data/dbs/mean.binaryproto")
    with pytest.raises(FormatError, match="starts like a .caffemodel"):
        binary.read_solverstate(shared_dir / SMALL_MODEL)
    with pytest.raises(FormatError, match="starts like a .caffemodel"):
        binary.read_blobproto(shared_dir / SMALL_MODEL)
    h5 = tmp_path / "w.caffemodel.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(FormatError, match="HDF5"):
        binary.read_caffemodel(h5)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    for reader in (binary.read_caffemodel, binary.read_net_binary, binary.read_solverstate,
                   binary.read_blobproto):
        with pytest.raises(FormatError, match="empty|expected"):
            reader(empty)


def test_shape_data_mismatch_and_bad_text():
    blob = _field(5, np.float32([1, 2, 3]).tobytes()) + _field(
        7, caffe_pb2.BlobShape(dim=[2, 2]).SerializeToString())
    raw = _field(100, _field(1, b"conv9") + _field(7, blob))
    with pytest.raises(FormatError, match=r"conv9.*4 values for blob shape \(2, 2\).*3 values"):
        binary.parse_caffemodel(raw)
    bad_utf8 = _field(100, _field(1, b"\xff\xfe"))
    with pytest.raises(FormatError, match="UTF-8"):
        binary.parse_caffemodel(bad_utf8)
    odd_packed = _field(100, _field(7, _field(5, b"\0" * 7)))
    with pytest.raises(FormatError, match="multiple of 4"):
        binary.parse_caffemodel(odd_packed)
    group = _field(100, _field(1, b"g")) + b"\x0b"  # field 1, wire type 3 (group)
    with pytest.raises(FormatError, match="wire type 3"):
        binary.parse_caffemodel(group)


def test_errors_are_netspec_errors():
    with pytest.raises(NetspecError):
        binary.parse_caffemodel(b"\xff")
    with pytest.raises(NetspecError):
        binary.parse_blobproto(b"\xff\xff")


# ----------------------------------------------------------------------------- fuzzing

_FUZZ_CACHE = {}


def _fuzz_seed():
    if "raw" not in _FUZZ_CACHE:
        shared = Path(__file__).resolve().parents[2].parent / "shared"
        path = shared / SMALL_MODEL
        if not path.is_file():
            pytest.skip("../shared (reference data) is not present")
        _FUZZ_CACHE["raw"] = path.read_bytes()
    return _FUZZ_CACHE["raw"]


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10 ** 6), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10 ** 6), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10 ** 6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10 ** 6), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 10 ** 6), st.just(0)),
)


def _mutate(raw, mutations):
    data = bytearray(raw)
    for kind, pos, arg in mutations:
        if not data:
            break
        pos %= len(data)
        if kind == "flip":
            data[pos] ^= arg
        elif kind == "set":
            data[pos] = arg
        elif kind == "insert":
            data[pos:pos] = arg
        elif kind == "delete":
            del data[pos:pos + arg]
        else:
            del data[pos:]
    return bytes(data)


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_mutation, min_size=1, max_size=4))
def test_fuzz_mutated_caffemodel(shared_dir, mutations):
    data = _mutate(_fuzz_seed(), mutations)
    try:
        model = binary.parse_caffemodel(data, source="fuzz")
    except FormatError:
        return
    # Success: the plain protobuf parse must agree on every value.
    _assert_model_matches_protobuf(model, data, "fuzz")


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(_mutation, min_size=1, max_size=3))
def test_fuzz_mutated_solverstate_and_blobproto(shared_dir, mutations):
    for rel, parse in (("golden/solvers/adam/snapshot/snap_iter_6.solverstate",
                        binary.parse_solverstate),
                       ("golden/data/dbs/mean.binaryproto", binary.parse_blobproto)):
        key = rel
        if key not in _FUZZ_CACHE:
            _FUZZ_CACHE[key] = (shared_dir / rel).read_bytes()
        data = _mutate(_FUZZ_CACHE[key], mutations)
        try:
            parse(data)
        except FormatError:
            pass


def test_read_net_binary_refuses_a_shape_claim_the_values_do_not_back(tmp_path):
    from netspec.errors import FormatError
    net = caffe_pb2.NetParameter()
    blob = net.layer.add(name="a", type="InnerProduct").blobs.add()
    blob.shape.dim.extend([2 ** 31, 2 ** 31])
    blob.data.extend([1.0])
    path = tmp_path / "claim.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(FormatError, match=r"layer 'a' blob 0: shape \(2147483648, 2147483648\) claims "
                                          r"4611686018427387904 values, the file holds 1"):
        binary.read_net_binary(path)
