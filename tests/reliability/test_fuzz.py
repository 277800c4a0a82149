"""Fuzzing every reader of untrusted input: each input ends in success or a NetspecError with a message.

Targets: the prototxt parser (nets and solvers), the binary readers (caffemodel, solverstate, binaryproto),
Datum parsing and decoding, LMDB databases (mutated Datum values; truncated or garbage data files), Python-layer
``param_str`` and net construction from mutated valid nets. Never another exception type, a crash, a hang (every
example runs under a time limit) or unbounded memory (crafted inputs whose length fields claim gigabytes run
under tracemalloc and under an address-space limit).

Seeds are built here (no reference data needed). The default budget is a few hundred examples in all;
``NETSPEC_FUZZ_EXAMPLES=10000`` runs 10,000 per cheap target (1,000 per costly one), randomised instead of
derandomised; the counts are printed at the end (see fuzzkit.py).
"""
import json
import math
import os
import resource
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzkit import FUZZ_COUNTS, fuzz_examples, record
from netspec.formats import binary, prototxt
from netspec.passes import upgrade
from netspec.data import datum as D
from netspec.data.lmdb_io import LMDBReader, LMDBWriter
from netspec.errors import NetspecError
from netspec.layers.python import parse_param_str
from netspec.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[2]
NIGHTLY = bool(os.environ.get("NETSPEC_FUZZ_EXAMPLES", "").strip())


def fuzz_settings(default: int, cost: int = 1):
    return settings(max_examples=fuzz_examples(default, cost), deadline=None, derandomize=not NIGHTLY,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


# ============================================================================================== byte mutations

INTERESTING_BYTES = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff\x0f",
                     b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varint 2**64 - 1
                     b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",  # unterminated varint
                     b"\x0a\xff\xff\xff\xff\x07",  # field 1 (LEN) claiming 2 GB
                     b"\xa2\x06\x80\x80\x80\x80\x40",  # field 100 (layer) claiming 16 GB
                     b"\x3a\x80\x80\x80\x80\x10",  # field 7 (blobs / shape) claiming 4 GB
                     b"\x2a\xff\xff\xff\xff\x0f",  # packed data claiming 4 GB
                     b"\x0b", b"\x0c", b"\x0e", b"\x0f"]  # group / invalid wire types

byte_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.sampled_from(INTERESTING_BYTES)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 32)),
    st.tuples(st.just("dup"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
)


def mutate_bytes(raw: bytes, mutations) -> bytes:
    data = bytearray(raw)
    for kind, pos, arg in mutations:
        pos = pos % (len(data) + 1)
        if kind == "flip" and pos < len(data):
            data[pos] ^= arg
        elif kind == "set" and pos < len(data):
            data[pos] = arg
        elif kind == "insert":
            data[pos:pos] = arg
        elif kind == "delete":
            del data[pos:pos + arg]
        elif kind == "dup":
            data[pos:pos] = data[pos:pos + arg]
        elif kind == "truncate":
            del data[pos:]
    return bytes(data)


def mutated(seeds):
    """A strategy: one of ``seeds`` (bytes) with 1 to 5 byte mutations."""
    return st.builds(mutate_bytes, st.sampled_from(seeds), st.lists(byte_mutation, min_size=1, max_size=4))


# ============================================================================================== prototxt

NET_SEED = '''name: "seed"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } shape { dim: 2 dim: 1 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.2 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "pool1" top: "up"
  convolution_param { num_output: 4 kernel_size: 4 stride: 2 bias_term: false group: 4 } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" crop_param { axis: 2 offset: 0 } }
layer { name: "score" type: "Convolution" bottom: "crop" top: "score" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 normalize: false } include { phase: TEST } }
'''

NET_SEED_2 = '''name: "seed2"
input: "x" input_shape { dim: 2 dim: 6 dim: 4 dim: 4 }
force_backward: true
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "bn" batch_norm_param { use_global_stats: true } }
layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" scale_param { bias_term: true axis: 1 } }
layer { name: "slice" type: "Slice" bottom: "sc" top: "a" top: "b" slice_param { axis: 1 slice_point: 2 } }
layer { name: "cat" type: "Concat" bottom: "b" bottom: "a" top: "cat" concat_param { axis: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "cat" bottom: "sc" top: "sum" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "lrn" type: "LRN" bottom: "sum" top: "lrn" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
layer { name: "pw" type: "Power" bottom: "lrn" top: "pw" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "pw" top: "ip" inner_product_param { num_output: 5 axis: 1 } }
layer { name: "rs" type: "Reshape" bottom: "ip" top: "rs" reshape_param { shape { dim: 0 dim: -1 dim: 1 } } }
layer { name: "fl" type: "Flatten" bottom: "rs" top: "fl" }
layer { name: "drop" type: "Dropout" bottom: "fl" top: "fl" dropout_param { dropout_ratio: 0.3 } }
layer { name: "sm" type: "Softmax" bottom: "fl" top: "prob" softmax_param { axis: 1 } }
layer { name: "interp" type: "Interp" bottom: "x" top: "big" interp_param { zoom_factor: 2 } }
layer { name: "mvn" type: "MVN" bottom: "big" top: "mvn" mvn_param { across_channels: true } }
layer { name: "red" type: "Reduction" bottom: "mvn" top: "red" reduction_param { operation: SUMSQ axis: 1 } }
layer { name: "tile" type: "Tile" bottom: "red" top: "tile" tile_param { axis: 0 tiles: 3 } }
layer { name: "arg" type: "ArgMax" bottom: "prob" top: "arg" argmax_param { top_k: 2 } }
layer { name: "spp" type: "SPP" bottom: "x" top: "spp" spp_param { pyramid_height: 2 } }
layer { name: "silence" type: "Silence" bottom: "tile" bottom: "arg" bottom: "spp" }
'''

V1_SEED = '''name: "v1"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 2 } }
'''

SOLVER_SEED = '''net: "train.prototxt"
test_iter: 10 test_interval: 100 test_initialization: false
base_lr: 1e-3 lr_policy: "multistep" gamma: 0.1 stepvalue: 100 stepvalue: 200
momentum: 0.9 momentum2: 0.999 delta: 1e-8 weight_decay: 5e-4 regularization_type: "L2"
max_iter: 1000 iter_size: 2 display: 20 average_loss: 20 clip_gradients: 10
snapshot: 500 snapshot_prefix: "snapshots/x" solver_mode: CPU random_seed: 3 type: "Adam"
train_state { stage: "a" level: 1 }
'''

TOKENS = (list("{}<>[]:;,#\"'\\\n .-+eE0123456789xX_") +
          ["layer", "layers", "name", "dim", "top", "bottom", "type", "param", "shape", "include", "phase",
           "TEST", "TRAIN", "MAX", "true", "false", "inf", "-inf", "nan", "1e400", "-1", "0x7fffffff",
           "4294967296", "99999999999999999999999999", "\"\\x", "\\u12", "\xff", "\x00", "é", "\U0001F600",
           "layer { ", " } ", "input_param { shape { dim: 1 } } ", "{" * 200, "convolution_param { "])


@st.composite
def mutated_text(draw, seeds):
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "duplicate"]))
        piece = "".join(draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=3)))
        if action == "insert":
            text = text[:pos] + piece + text[pos:]
        elif action == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 40)):]
        elif action == "replace":
            text = text[:pos] + piece + text[pos + len(piece):]
        elif action == "duplicate":
            n = draw(st.integers(1, 200))
            text = text[:pos + n] + text[pos:]
        else:
            text = text[:pos]
    return text


def _as_input(text: str, as_bytes: bool):
    return text.encode("utf-8", errors="surrogatepass") if as_bytes else text


@fuzz_settings(100)
@given(mutated_text([NET_SEED, NET_SEED_2, V1_SEED, SOLVER_SEED]), st.booleans())
def test_fuzz_prototxt_net(text, as_bytes):
    ok, net = record("prototxt.parse_net", prototxt.parse_net, _as_input(text, as_bytes), path="fuzz.prototxt")
    if ok:
        # What parses writes back and reads back the same; the line scan never fails.
        assert prototxt.parse_net(prototxt.to_text(net), path="again") == net
        assert isinstance(prototxt.layer_lines(text), list)
    elif as_bytes or "\n" in text:  # (a one-line str ending in .prototxt is a path, by design)
        assert str(net).startswith("fuzz.prototxt")


@fuzz_settings(40)
@given(mutated_text([SOLVER_SEED, NET_SEED]), st.booleans())
def test_fuzz_prototxt_solver(text, as_bytes):
    ok, solver = record("prototxt.parse_solver", prototxt.parse_solver, _as_input(text, as_bytes),
                        path="fuzz.prototxt")
    if ok:
        assert prototxt.parse_solver(prototxt.to_text(solver)) == solver


@fuzz_settings(40)
@given(st.binary(max_size=300))
def test_fuzz_prototxt_random_bytes(data):
    record("prototxt.parse_net", prototxt.parse_net, data, path="fuzz.prototxt")
    record("prototxt.parse_solver", prototxt.parse_solver, data, path="fuzz.prototxt")


# ============================================================================================== binary

def _f32(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _key(num, wt):
    return binary._key_bytes(num, wt)


def _caffemodel_seeds():
    net = caffe_pb2.NetParameter(name="seed")
    conv = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    conv.convolution_param.num_output = 2
    conv.convolution_param.kernel_size.append(3)
    conv.blobs.add().CopyFrom(binary.array_to_blob(_f32(2, 1, 3, 3)))
    conv.blobs.add().CopyFrom(binary.array_to_blob(_f32(2, seed=1)))
    legacy = net.layer.add(name="ip", type="InnerProduct", bottom=["conv1"], top=["ip"])
    blob = legacy.blobs.add(num=1, channels=1, height=3, width=4)
    blob.data.extend(_f32(12, seed=2).tolist())
    dbl = net.layer.add(name="scale", type="Scale", bottom=["ip"], top=["ip"])
    dbl.blobs.add(shape=caffe_pb2.BlobShape(dim=[3])).double_data.extend([0.5, -1.0, 2.0])
    net.layer.add(name="relu", type="ReLU", bottom=["ip"], top=["ip"])
    v2 = net.SerializeToString()

    # The same conv weights with unpacked float data (field 5, wire type 5, one key per value).
    unpacked_blob = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2, 2])).SerializeToString()
    unpacked_blob += b"".join(_key(5, 5) + struct.pack("<f", v) for v in (1.0, 2.0, 3.0, 4.0))
    layer = caffe_pb2.LayerParameter(name="u", type="InnerProduct").SerializeToString()
    layer += binary._len_field(7, unpacked_blob)
    unpacked = binary._len_field(100, layer)

    v1 = caffe_pb2.NetParameter(name="v1")
    l1 = v1.layers.add(name="conv", type=caffe_pb2.V1LayerParameter.CONVOLUTION, bottom=["data"], top=["conv"])
    l1.blobs.add().CopyFrom(binary.array_to_blob(_f32(2, 3, 3, 3, seed=3)))
    l1.blobs.add().CopyFrom(binary.array_to_blob(_f32(2, seed=4)))
    l0 = v1.layers.add(name="v0")
    l0.layer.name = "v0"
    l0.layer.type = "innerproduct"
    l0.layer.blobs.add().CopyFrom(binary.array_to_blob(_f32(3, 4, seed=5)))
    return [v2, unpacked, v1.SerializeToString()]


def _solverstate_seeds():
    state = binary.SolverStateData(iter=7, learned_net="snap_iter_7.caffemodel", current_step=2,
                                   history=[_f32(2, 1, 3, 3), _f32(2, seed=1), _f32(0)])
    return [state.to_proto().SerializeToString()]


def _blobproto_seeds():
    legacy = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2)
    legacy.data.extend(_f32(12).tolist())
    dbl = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2, 3]))
    dbl.double_data.extend(range(6))
    return [binary.array_to_blob(_f32(3, 4, 5)).SerializeToString(), legacy.SerializeToString(),
            dbl.SerializeToString(), binary.array_to_blob(np.float32(3.0)).SerializeToString()]


CAFFEMODEL_SEEDS = _caffemodel_seeds()
SOLVERSTATE_SEEDS = _solverstate_seeds()
BLOBPROTO_SEEDS = _blobproto_seeds()


def _check_model(data):
    model = binary.parse_caffemodel(data, source="fuzz.caffemodel")
    for layer, arrays in model.items():
        stubs = list(layer.blobs) + (list(layer.layer.blobs) if hasattr(layer, "layer") else [])
        for stub, arr in zip(stubs, arrays):
            assert arr.dtype == np.float32 and arr.shape == binary.blob_shape(stub)
    layers = list(upgrade.weight_layers(model))  # V0/V1 upgrade on the mutated metadata
    return model, layers


@fuzz_settings(100)
@given(mutated(CAFFEMODEL_SEEDS))
def test_fuzz_caffemodel(data):
    ok, _ = record("binary.parse_caffemodel", _check_model, data)
    if not ok:
        return
    # Success: protobuf's own parser agrees on the structure.
    full = caffe_pb2.NetParameter.FromString(data)
    assert len(full.layer) + len(full.layers) > 0


@fuzz_settings(30)
@given(mutated(CAFFEMODEL_SEEDS + SOLVERSTATE_SEEDS + BLOBPROTO_SEEDS))
def test_fuzz_binary_files_through_mmap(tmp_path_factory, data):
    """The path readers (mmap, page release) see the same bytes as the in-memory parsers."""
    path = tmp_path_factory.getbasetemp() / "fuzz.bin"
    path.write_bytes(data)
    record("binary.read_caffemodel", binary.read_caffemodel, path)
    record("binary.read_net_binary", binary.read_net_binary, path)
    record("binary.read_solverstate", binary.read_solverstate, path)
    record("binary.read_blobproto", binary.read_blobproto, path)


@fuzz_settings(60)
@given(mutated(SOLVERSTATE_SEEDS + CAFFEMODEL_SEEDS[:1]))
def test_fuzz_solverstate(data):
    ok, state = record("binary.parse_solverstate", binary.parse_solverstate, data, source="fuzz.solverstate")
    if ok:
        assert all(a.dtype == np.float32 for a in state.history)


@fuzz_settings(60)
@given(mutated(BLOBPROTO_SEEDS))
def test_fuzz_blobproto(data):
    ok, arr = record("binary.parse_blobproto", binary.parse_blobproto, data, source="fuzz.binaryproto")
    if ok:
        assert arr.dtype == np.float32


@fuzz_settings(40)
@given(st.binary(max_size=400))
def test_fuzz_binary_random_bytes(data):
    record("binary.parse_caffemodel", binary.parse_caffemodel, data)
    record("binary.parse_solverstate", binary.parse_solverstate, data)
    record("binary.parse_blobproto", binary.parse_blobproto, data)


# ============================================================================================== Datum

def _encoded(ext, img):
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


_IMG = np.random.default_rng(7).integers(0, 256, (6, 5, 3), dtype=np.uint8)
IMAGE_SEEDS = [_encoded(".png", _IMG), _encoded(".jpg", _IMG), _encoded(".png", _IMG[:, :, 0]),
               _encoded(".bmp", _IMG), _encoded(".webp", _IMG), _encoded(".tiff", _IMG)]


def _datum_seeds():
    raw = D.array_to_datum(_IMG.transpose(2, 0, 1).copy(), label=3)
    flt = D.array_to_datum(_f32(2, 3, 4), label=1)
    enc = [D.encoded_datum(b, label=i) for i, b in enumerate(IMAGE_SEEDS)]
    return [d.SerializeToString() for d in [raw, flt, *enc]]


DATUM_SEEDS = _datum_seeds()
DIMS = st.one_of(st.integers(-3, 8), st.sampled_from([2 ** 31 - 1, -2 ** 31, 65535, 1 << 20]))


@st.composite
def datum_bytes(draw):
    """Mutated Datum bytes: byte mutations of a serialized Datum, an encoded Datum with a mutated image, or a
    Datum whose fields disagree (dims against data length)."""
    kind = draw(st.sampled_from(["bytes", "image", "fields"]))
    if kind == "bytes":
        return draw(mutated(DATUM_SEEDS))
    if kind == "image":
        img = draw(mutated(IMAGE_SEEDS))
        return D.encoded_datum(img, label=draw(st.integers(-5, 5))).SerializeToString()
    d = caffe_pb2.Datum(channels=draw(DIMS), height=draw(DIMS), width=draw(DIMS),
                        encoded=draw(st.booleans()), label=draw(st.integers(-2 ** 31, 2 ** 31 - 1)))
    if draw(st.booleans()):
        d.data = draw(st.binary(max_size=200))
    else:
        d.float_data.extend(draw(st.lists(st.floats(width=32), max_size=50)))
    return d.SerializeToString()


def _decode(value, key, color, gray):
    d = D.parse_datum(value, key)
    arr = D.decode_datum(d, key, force_color=color, force_gray=gray)
    assert arr.ndim == 3 and arr.size > 0
    return arr


@fuzz_settings(80)
@given(datum_bytes(), st.booleans(), st.booleans())
def test_fuzz_datum(value, color, gray):
    ok, result = record("datum.decode_datum", _decode, value, b"00000042_img.png", color, gray)
    if not ok and not (color and gray):
        assert "00000042_img.png" in str(result)  # errors name the record


# ============================================================================================== param_str

@fuzz_settings(40)
@given(st.one_of(st.text(max_size=80),
                 mutated_text(["{'source': 'data/x', 'mean': (104.0, 116.6, 122.6), 'split': 'train', "
                               "'seed': 1337, 'randomize': True}"])))
def test_fuzz_param_str(text):
    record("python.parse_param_str", parse_param_str, text)


# ============================================================================================== LMDB values

DATA_NET = '''layer {{ name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{source}" batch_size: 2 backend: LMDB prefetch: {prefetch} }}
  transform_param {{ scale: 0.5 mean_value: 1 {crop} }} }}'''


def _read_db(path):
    r = LMDBReader(path)
    try:
        n = len(r)
        keys = r.keys()
        assert len(keys) == n
        for k, v in r.items():
            try:
                D.decode_datum(v, k)
            except NetspecError as e:
                assert k.decode() in str(e)
        for i in range(n):
            try:
                r.array(i)
            except NetspecError:
                pass
        return r.first()
    finally:
        r.close()


def _data_layer_forward(path, prefetch, crop):
    from netspec.net.pycaffe import Net, TEST
    text = DATA_NET.format(source=path, prefetch=prefetch, crop=f"crop_size: {crop}" if crop else "")
    net = Net(prototxt.parse_net(text), TEST)
    for _ in range(3):  # wraps around the 1-4 records
        net.forward()
    return net


@fuzz_settings(10, cost=10)
@given(st.lists(st.one_of(datum_bytes(), st.sampled_from(DATUM_SEEDS)), min_size=1, max_size=4),
       st.integers(0, 2), st.sampled_from([0, 3, 100]))
def test_fuzz_lmdb_of_mutated_datums(tmp_path_factory, values, prefetch, crop):
    path = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())) / "db"
    with LMDBWriter(path) as w:
        for i, v in enumerate(values):
            w.put(f"{i:08d}_rec", v)
    record("lmdb.LMDBReader", _read_db, path)
    record("lmdb.Data layer", _data_layer_forward, str(path), prefetch, crop, limit=60)


# ============================================================================================== LMDB files

LMDB_FILE_CHILD = textwrap.dedent(r'''
    import collections, json, os, shutil, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from netspec.data.datum import array_to_datum, decode_datum
    from netspec.data.lmdb_io import LMDBReader, LMDBWriter
    from netspec.errors import NetspecError
    work, n, seed = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    src = os.path.join(work, "src")
    with LMDBWriter(src) as w:
        for i in range(300):  # several leaf pages and a branch page
            w.put(f"{i:08d}", array_to_datum(np.full((3, 8, 8), i % 256, np.uint8), label=i))
    orig = open(os.path.join(src, "data.mdb"), "rb").read()
    counts = collections.Counter()
    rng = np.random.default_rng(seed)
    for case in range(n):
        mode = ["truncate", "garbage", "meta", "append", "empty"][case % 5]
        data = bytearray(orig)
        if mode == "truncate":
            data = data[:int(rng.integers(0, len(data)))]
        elif mode == "garbage":
            data = bytearray(rng.integers(0, 256, int(rng.integers(1, 5 * 4096)), dtype=np.uint8).tobytes())
        elif mode == "meta":  # the two meta pages: magic, version, page size, root, last page, txn id
            for _ in range(int(rng.integers(1, 6))):
                data[int(rng.integers(0, 8192))] ^= int(rng.integers(1, 256))
        elif mode == "append":
            data += rng.integers(0, 256, int(rng.integers(1, 9000)), dtype=np.uint8).tobytes()
        else:
            data = bytearray()
        dst = os.path.join(work, f"case{case}")
        os.makedirs(dst)
        with open(os.path.join(dst, "data.mdb"), "wb") as f:
            f.write(data)
        print(f"case {case} {mode} {len(data)} bytes", file=sys.stderr, flush=True)
        counts["inputs"] += 1
        try:
            r = LMDBReader(dst)
            len(r)
            for k, v in r.items():
                try:
                    decode_datum(v, k)
                except NetspecError:
                    pass
            r.close()
            counts["ok"] += 1
        except NetspecError as e:
            assert str(e).strip()
            counts["netspec_error"] += 1
        except Exception as e:
            counts["other"] += 1
            print(f"OTHER case {case} {mode}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        shutil.rmtree(dst)
    print(json.dumps(counts))
''')


def test_fuzz_lmdb_truncated_and_garbage_files(tmp_path):
    """Truncated (SIGBUS territory without the size check), garbage, meta-page-damaged and over-long data.mdb
    files: a NetspecError or success, in a child process so that a crash is seen as one."""
    n = fuzz_examples(25, cost=10)
    seed = int(time.time()) if NIGHTLY else 1
    script = tmp_path / "child.py"
    script.write_text(LMDB_FILE_CHILD)
    proc = subprocess.run([sys.executable, str(script), str(REPO), str(tmp_path), str(n), str(seed)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"child died (rc {proc.returncode}, seed {seed}):\n{proc.stderr[-3000:]}"
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    FUZZ_COUNTS["lmdb.data.mdb file"].update(counts)
    assert counts.get("other", 0) == 0, proc.stderr[-3000:]
    assert counts["inputs"] == n


# ============================================================================================== net construction

INT_VALUES = [-2 ** 31, -7, -1, 0, 1, 2, 3, 5, 13, 100, 65536, 2 ** 31 - 1]
UINT_VALUES = [0, 1, 2, 3, 5, 13, 100, 65536, 2 ** 31 - 1, 2 ** 32 - 1]
FLOAT_VALUES = [0.0, -1.0, 1e-30, 0.5, 2.0, 1e30, float("inf"), float("-inf"), float("nan")]
SAFE_TYPES = [t for t in ("AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip",
                          "Concat", "ContrastiveLoss", "Convolution", "Crop", "Deconvolution", "Dropout",
                          "DummyData", "ELU", "Eltwise", "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten",
                          "HingeLoss", "Im2col", "InfogainLoss", "InnerProduct", "Input", "Interp", "LRN", "LSTM",
                          "Log", "MVN", "MemoryData", "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling",
                          "Power", "RNN", "ReLU", "Reduction", "Reshape", "SPP", "Scale", "Sigmoid",
                          "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax", "SoftmaxWithLoss", "Split",
                          "Swish", "TanH", "Threshold", "Tile", "NoSuchLayer")]  # no file or module access

_NUMERIC = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 8: "bool", 13: "uint32", 14: "enum",
    15: "sfixed32", 16: "sfixed64", 17: "sint32", 18: "sint64", 6: "fixed64", 7: "fixed32",
}


def _scalar_fields(msg, prefix=()):
    """(message, field descriptor) for every numeric scalar or repeated numeric field reachable in ``msg``
    (set or not), over the set sub-messages."""
    out = []
    for fd in msg.DESCRIPTOR.fields:
        if fd.type == fd.TYPE_MESSAGE:
            if binary._is_repeated(fd):
                for sub in getattr(msg, fd.name):
                    out += _scalar_fields(sub, prefix + (fd.name,))
            elif msg.HasField(fd.name):
                out += _scalar_fields(getattr(msg, fd.name), prefix + (fd.name,))
        elif fd.type in _NUMERIC:
            out.append((msg, fd))
    return out


def _value_for(fd, draw):
    kind = _NUMERIC[fd.type]
    if kind in ("float", "double"):
        return draw(st.sampled_from(FLOAT_VALUES))
    if kind == "bool":
        return draw(st.booleans())
    if kind == "enum":
        return draw(st.sampled_from([v.number for v in fd.enum_type.values]))
    if kind.startswith("u") or kind.startswith("fixed"):
        return draw(st.sampled_from(UINT_VALUES))
    return draw(st.sampled_from(INT_VALUES))


@st.composite
def mutated_net(draw):
    net = prototxt.parse_net(draw(st.sampled_from([NET_SEED, NET_SEED_2, V1_SEED])))
    from netspec.passes import upgrade
    if upgrade.needs_upgrade(net):
        net, _ = upgrade.upgrade_net(net)
    for _ in range(draw(st.integers(1, 4))):
        if not net.layer:
            break
        i = draw(st.integers(0, len(net.layer) - 1))
        layer = net.layer[i]
        op = draw(st.sampled_from(["field", "field", "field", "append", "clear", "type", "bottom", "top",
                                   "drop_layer", "swap", "dup_layer", "phase"]))
        if op in ("field", "append", "clear"):
            fields = _scalar_fields(layer)
            if not fields:
                continue
            msg, fd = draw(st.sampled_from(fields))
            if op == "clear":
                msg.ClearField(fd.name)
            elif binary._is_repeated(fd):
                container = getattr(msg, fd.name)
                if op == "append" or not len(container):
                    container.append(_value_for(fd, draw))
                else:
                    container[draw(st.integers(0, len(container) - 1))] = _value_for(fd, draw)
            else:
                setattr(msg, fd.name, _value_for(fd, draw))
        elif op == "type":
            layer.type = draw(st.sampled_from(SAFE_TYPES))
        elif op == "bottom":
            names = [t for l in net.layer for t in l.top] + ["nowhere"]
            if layer.bottom and draw(st.booleans()):
                del layer.bottom[draw(st.integers(0, len(layer.bottom) - 1))]
            else:
                layer.bottom.append(draw(st.sampled_from(names)))
        elif op == "top":
            if layer.top and draw(st.booleans()):
                del layer.top[draw(st.integers(0, len(layer.top) - 1))]
            else:
                layer.top.append(draw(st.sampled_from(["extra", layer.name] + list(layer.bottom))))
        elif op == "drop_layer":
            del net.layer[i]
        elif op == "swap":
            j = draw(st.integers(0, len(net.layer) - 1))
            a, b = caffe_pb2.LayerParameter(), caffe_pb2.LayerParameter()
            a.CopyFrom(net.layer[i])
            b.CopyFrom(net.layer[j])
            net.layer[i].CopyFrom(b)
            net.layer[j].CopyFrom(a)
        elif op == "dup_layer":
            net.layer.add().CopyFrom(layer)
        else:
            layer.include.add().phase = draw(st.sampled_from([caffe_pb2.TRAIN, caffe_pb2.TEST]))
    return net


_FORWARD_LIMIT = 1 << 20  # elements: run the mutated net only when all its blobs are small


def _build_and_run(net_param):
    from netspec.net.pycaffe import Net, TEST
    net = Net(net_param, TEST)
    if sum(math.prod(b.shape) for b in net.blobs.values()) <= _FORWARD_LIMIT:
        net.forward()
        net.backward()
    return net


@pytest.fixture(scope="module")
def address_space_cap():
    """A soft address-space limit of the current size + 1 GiB while the net fuzzer runs. Nets asking for more
    than INT_MAX elements per blob are refused before allocating; a legal but big one (a 4 GB weight) then fails
    its allocation (a LayerError) instead of taking gigabytes of a shared machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    cap = vm + (1 << 30)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@fuzz_settings(40, cost=10)
@given(mutated_net())
def test_fuzz_net_construction(address_space_cap, net_param):
    record("net.Net(mutated, TEST)", _build_and_run, net_param, limit=60)


# ============================================================================================== memory bounds

def _varint(n):
    return binary._varint_bytes(n)


def _field(num, payload):
    return binary._len_field(num, payload)


def _png_claiming(w, h):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def _jpeg_claiming(w, h):
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def crafted_inputs():
    """Small inputs whose length or dims fields claim gigabytes: (name, reader, bytes)."""
    huge_shape = caffe_pb2.BlobShape(dim=[10 ** 6, 10 ** 6]).SerializeToString()
    return [
        ("caffemodel: 16 GiB layer", "caffemodel", _varint((100 << 3) | 2) + _varint(2 ** 34) + b"abc"),
        ("caffemodel: 2 GiB blob in 20 bytes", "caffemodel",
         _field(100, _field(1, b"x") + _varint((7 << 3) | 2) + _varint(2 ** 31) + b"\x2a")),
        ("caffemodel: 4 GiB packed data", "caffemodel",
         _field(100, _field(7, _varint((5 << 3) | 2) + _varint(2 ** 32) + b"\0" * 8))),
        ("caffemodel: shape of 10^12, 2 values", "caffemodel",
         _field(100, _field(7, _field(5, b"\0" * 8) + _field(7, huge_shape)))),
        ("caffemodel: 10^12 legacy dims, no data", "caffemodel",
         _field(100, _field(7, caffe_pb2.BlobProto(num=10 ** 4, channels=10 ** 4, height=10 ** 4,
                                                   width=10 ** 4).SerializeToString()))),
        ("solverstate: 8 GiB history blob", "solverstate",
         b"\x08\x05" + _varint((3 << 3) | 2) + _varint(2 ** 33) + b"\0" * 10),
        ("solverstate: history shape 10^12", "solverstate",
         b"\x08\x05" + _field(3, _field(5, b"\0" * 4) + _field(7, huge_shape))),
        ("binaryproto: 4 GiB packed data", "blobproto", _varint((5 << 3) | 2) + _varint(2 ** 32 - 4) + b"\0" * 8),
        ("binaryproto: 10^12 dims", "blobproto", _field(7, huge_shape) + _field(5, b"\0" * 4)),
        ("binaryproto: unterminated varint run", "blobproto", b"\x08" + b"\xff" * 19),
        ("datum: 2^31-1 cubed dims, 3 bytes", "datum",
         caffe_pb2.Datum(channels=2 ** 31 - 1, height=2 ** 31 - 1, width=2 ** 31 - 1, data=b"abc")
         .SerializeToString()),
        ("datum: 1 GiB float_data claim", "datum", _varint((6 << 3) | 2) + _varint(2 ** 30) + b"\0" * 8),
        ("datum: 68-byte PNG claiming 30000x30000", "datum",
         D.encoded_datum(_png_claiming(30000, 30000)).SerializeToString()),
        ("datum: JPEG claiming 4000x4000 (libjpeg would fill it in grey)", "datum",
         D.encoded_datum(_jpeg_claiming(4000, 4000)).SerializeToString()),
        ("datum: 5x6 PNG whose IDAT claims 600 MB", "datum",
         D.encoded_datum(_png_claiming(5, 6)[:33] + struct.pack(">I", 603979883) + b"IDAT" + b"\0" * 40)
         .SerializeToString()),
        ("datum: 29-byte PPM claiming 30000x30000", "datum",
         D.encoded_datum(b"P6 30000 30000 255\n" + b"\0" * 10).SerializeToString()),
    ]


def _read_crafted(kind, data):
    if kind == "caffemodel":
        return binary.parse_caffemodel(data)
    if kind == "solverstate":
        return binary.parse_solverstate(data)
    if kind == "blobproto":
        return binary.parse_blobproto(data)
    return D.decode_datum(data, b"crafted")


@pytest.mark.parametrize("name,kind,data", crafted_inputs(), ids=[c[0] for c in crafted_inputs()])
def test_length_fields_do_not_allocate(name, kind, data):
    """tracemalloc sees every numpy allocation: a reader must refuse before allocating what a field claims."""
    assert len(data) < 1000
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(NetspecError) as err:
            _read_crafted(kind, data)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    assert str(err.value).strip()
    assert peak < 1 << 20 and elapsed < 1.0, (name, peak, elapsed)


MEMORY_CHILD = textwrap.dedent(r'''
    import json, resource, sys
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[2])
    import test_fuzz as T
    from netspec import prototxt
    from netspec.errors import NetspecError
    from netspec.net.pycaffe import Net, TEST
    nets = {
        "net: 10^10-element Input": 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 100000 dim: 100000 } } }',
        "net: 9*10^9-element conv weight": 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1000 dim: 4 dim: 4 } } } '
            'layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 1000000 kernel_size: 3 } }',
        "net: 10^10-element DummyData": 'layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 100000 dim: 100000 } } }',
        "net: 10^10-element Parameter": 'layer { name: "p" type: "Parameter" top: "x" parameter_param { shape { dim: 100000 dim: 100000 } } }',
    }
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), resource.RLIM_INFINITY))
    out = {}
    for name, kind, data in T.crafted_inputs():
        try:
            T._read_crafted(kind, data)
            out[name] = "ok"
        except NetspecError as e:
            out[name] = "NetspecError"
        except BaseException as e:
            out[name] = f"{type(e).__name__}: {e}"[:300]
    for name, text in nets.items():
        try:
            Net(prototxt.parse_net(text), TEST)
            out[name] = "ok"
        except NetspecError as e:
            out[name] = "NetspecError"
        except BaseException as e:
            out[name] = f"{type(e).__name__}: {e}"[:300]
    print(json.dumps(out))
''')


def test_length_fields_under_address_space_limit(tmp_path):
    """The crafted inputs (and nets whose dims claim 10^10 elements) fail cleanly in a process that may not map
    more than 512 MiB beyond what it holds after start-up: nothing reserves what a length field claims, not even
    untouched virtual memory (OpenCV's decoders would reserve 2.6 GB for the PNG and PPM)."""
    script = tmp_path / "child.py"
    script.write_text(MEMORY_CHILD)
    proc = subprocess.run([sys.executable, str(script), str(REPO), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(crafted_inputs()) + 4
    assert all(v == "NetspecError" for v in results.values()), results
