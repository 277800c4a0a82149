"""Hostile net definitions: cycles, huge layer counts, absurd dims and strides, empty nets, enormous fan-in.

Each must build, or fail with a NetspecError naming the layer, in bounded time and memory. The 100,000-layer
build and the million-layer parse are ``slow`` (``-m slow``); the default run checks 10,000 layers and that
building time grows linearly.
"""
import math
import resource
import time

import numpy as np
import pytest

from netspec.formats import prototxt
from netspec.errors import LayerError, NetspecError, PrototxtError
from netspec.net.pycaffe import TEST, Net

from fuzzkit import time_limit

INPUT = 'layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n'


def _dims(*dims):
    return " ".join(f"dim: {d}" for d in dims)


def _input(*dims, top="x", name="in"):
    return INPUT.format(dims=_dims(*dims)).replace('"in"', f'"{name}"').replace('"x"', f'"{top}"')


def _net(text, limit=60):
    with time_limit(limit, "net build"):
        return Net(prototxt.parse_net(text, path="hostile.prototxt"), TEST)


def _maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------ wiring

def test_layer_reading_a_blob_produced_later_is_refused(tmp_path):
    path = tmp_path / "hostile.prototxt"
    path.write_text('name: "cycle"\nlayer { name: "early" type: "ReLU" bottom: "late" top: "y" }\n'
                    + _input(2, 3, top="late", name="producer"))
    with pytest.raises(PrototxtError, match=r"hostile.prototxt:2: layer 'early' \(ReLU\): Unknown bottom blob "
                                            r"'late'"):
        with time_limit(60):
            Net(str(path), TEST)


def test_two_layer_cycle_is_refused():
    text = (_input(2, 3) +
            'layer { name: "a" type: "Eltwise" bottom: "x" bottom: "b_out" top: "a_out" }\n'
            'layer { name: "b" type: "ReLU" bottom: "a_out" top: "b_out" }\n')
    with pytest.raises(PrototxtError, match=r"layer 'a' \(Eltwise\): Unknown bottom blob 'b_out'"):
        _net(text)


def test_layer_consuming_its_own_new_top_is_refused():
    text = _input(2, 3) + 'layer { name: "loop" type: "Eltwise" bottom: "x" bottom: "z" top: "z" }\n'
    with pytest.raises(PrototxtError, match="Unknown bottom blob 'z'"):
        _net(text)


def test_top_produced_twice_is_refused():
    text = _input(2, 3) + _input(2, 3, name="again")
    with pytest.raises(PrototxtError, match="produced by multiple sources"):
        _net(text)


def test_empty_net_builds_and_runs():
    for text in ("", 'name: "nothing"', "# only a comment\n"):
        net = _net(text)
        assert net.forward() == {} and net.backward() == {}
        assert list(net.blobs) == [] and list(net.params) == []


# ------------------------------------------------------------------------------------------------ many layers

def _input_layers(n):
    return "".join(f'layer {{ name: "in{i}" type: "Input" top: "x{i}" input_param {{ shape {{ dim: 1 }} }} }}\n'
                   for i in range(n))


def _relu_chain(n):
    lines = [_input(1, 1, top="t0")]
    lines += [f'layer {{ name: "r{i}" type: "ReLU" bottom: "t{i}" top: "t{i + 1}" }}\n' for i in range(n)]
    return "".join(lines)


def _timed_build(text):
    start = time.perf_counter()
    net = _net(text, limit=600)
    return net, time.perf_counter() - start


def test_10000_trivial_layers_build_in_linear_time():
    """10,000 layers, each a net output: the execution plan once kept its outputs in a list (quadratic; 100,000
    such layers took minutes). Building 4x the layers must take well under 16x the time."""
    _timed_build(_input_layers(300))  # warm-up
    small, t_small = _timed_build(_input_layers(2500))
    big, t_big = _timed_build(_input_layers(10000))
    assert len(big.outputs) == 10000 and len(small.outputs) == 2500
    assert t_big < 8 * t_small + 1.0, (t_small, t_big)
    assert t_big < 30, t_big


def test_layer_with_10000_bottoms():
    """One blob read 10,000 times (Caffe's Split gets 10,000 tops) and a Concat of 10,000 bottoms."""
    n = 10000
    text = (_input(1, 1, 2) +
            'layer { name: "cat" type: "Concat" bottom: "x" top: "cat" concat_param { axis: 1 } }\n')
    text = text.replace('bottom: "x"', " ".join(['bottom: "x"'] * n))
    before = _maxrss_mb()
    net, elapsed = _timed_build(text)
    assert net.blobs["cat"].shape == (1, n, 2)
    split = net.layers[1]
    assert split.type == "Split" and len(net.top_names[split.name]) == n
    with time_limit(60, "forward"):
        out = net.forward(x=np.ones((1, 1, 2), np.float32))
    assert out["cat"].shape == (1, n, 2) and out["cat"].sum() == 2 * n
    assert elapsed < 60 and _maxrss_mb() - before < 1024


def test_silence_with_10000_distinct_bottoms():
    n = 10000
    text = _input_layers(n) + "layer { name: \"s\" type: \"Silence\" " + " ".join(
        f'bottom: "x{i}"' for i in range(n)) + " }\n"
    net, elapsed = _timed_build(text)
    assert net.outputs == [] and elapsed < 60


@pytest.mark.slow
def test_100000_trivial_layers():
    """Measured on the 2-core machine (2026-12-08): a 100,000-ReLU chain parses in ~4 s and builds in ~10 s (ReLU
    takes bottom 0's shape, no shape run; ~52 s with a fake-tensor run per layer before); 100,000 Input layers
    parse and build in ~15 s."""
    text = _relu_chain(100000)
    start = time.perf_counter()
    with time_limit(600, "parse"):
        param = prototxt.parse_net(text)
    t_parse = time.perf_counter() - start
    start = time.perf_counter()
    with time_limit(600, "build"):
        net = Net(param, TEST)
    t_build = time.perf_counter() - start
    out = net.forward(t0=np.full((1, 1), -2.0, np.float32))
    assert out == {"t100000": np.zeros((1, 1), np.float32)}
    net2, t_inputs = _timed_build(_input_layers(100000))
    assert len(net2.outputs) == 100000
    print(f"100k ReLU chain: parse {t_parse:.1f} s, build {t_build:.1f} s; 100k Input layers (parse + build) "
          f"{t_inputs:.1f} s")
    assert t_build < 300 and t_inputs < 120


@pytest.mark.slow
def test_million_layer_text_parses_or_fails_without_hanging():
    """Measured on the 2-core machine: 57 MiB of text parse in ~40 s, peak RSS ~1.8 GB (protobuf's text parser
    is pure Python)."""
    text = "".join(f'layer {{ name: "r{i}" type: "ReLU" bottom: "x" top: "x" }}\n' for i in range(1000000))
    start = time.perf_counter()
    with time_limit(600, "parse"):
        try:
            net = prototxt.parse_net(text)
            assert len(net.layer) == 1000000
        except NetspecError as e:
            assert str(e)
    print(f"1M-layer text ({len(text) >> 20} MiB): {time.perf_counter() - start:.1f} s")


# ------------------------------------------------------------------------------------------------ dims

@pytest.mark.parametrize("dims", [(-1, 3), (2, -5, 4), (-2 ** 31,)])
def test_negative_dims(dims):
    with pytest.raises(LayerError, match="negative"):
        _net(_input(*dims))


HUGE = [
    ("Input", _input(100000, 100000)),
    ("Input", _input(2 ** 31 - 1, 2)),
    ("Input", _input(65536, 65536, 65536, 65536)),
    ("DummyData", 'layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 100000 dim: 100000 } } }'),
    ("Parameter", 'layer { name: "p" type: "Parameter" top: "x" parameter_param { shape { dim: 100000 dim: 100000 } } }'),
    ("Convolution", _input(1, 1000, 4, 4) + 'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                    'convolution_param { num_output: 1000000 kernel_size: 3 } }'),
    ("Convolution", _input(1, 3, 4, 4) + 'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                    'convolution_param { num_output: 2147483647 kernel_size: 1 } }'),
    ("InnerProduct", _input(1, 100000) + 'layer { name: "c" type: "InnerProduct" bottom: "x" top: "y" '
                     'inner_product_param { num_output: 100000 } }'),
    ("Embed", _input(1, 3) + 'layer { name: "c" type: "Embed" bottom: "x" top: "y" '
              'embed_param { input_dim: 100000 num_output: 100000 } }'),
    ("Deconvolution", _input(1, 3, 8, 8) + 'layer { name: "c" type: "Deconvolution" bottom: "x" top: "y" '
                      'convolution_param { num_output: 2 kernel_size: 3 stride: 100000 } }'),
    ("Tile", _input(1, 3, 8, 8) + 'layer { name: "c" type: "Tile" bottom: "x" top: "y" '
             'tile_param { axis: 0 tiles: 2147483647 } }'),
    ("Interp", _input(1, 3, 8, 8) + 'layer { name: "c" type: "Interp" bottom: "x" top: "y" '
               'interp_param { zoom_factor: 100000 } }'),
    ("LSTM", _input(2, 1, 3, top="x") + _input(2, 1, top="cont", name="c_in") +
     'layer { name: "c" type: "LSTM" bottom: "x" bottom: "cont" top: "y" recurrent_param { num_output: 100000 } }'),
]


@pytest.mark.parametrize("layer_type,text", HUGE, ids=[f"{t}-{i}" for i, (t, _) in enumerate(HUGE)])
def test_blob_above_int_max_is_a_layer_error_without_allocating(layer_type, text):
    """Caffe's limit of INT_MAX elements per blob, checked for tops and for parameters before any memory is
    taken (these would otherwise ask for 10 to 10^8 GB)."""
    before = _maxrss_mb()
    start = time.perf_counter()
    with pytest.raises(LayerError, match=r"INT_MAX") as err:
        _net(text)
    assert f"({layer_type})" in str(err.value)
    assert time.perf_counter() - start < 10 and _maxrss_mb() - before < 200


# ------------------------------------------------------------------------------------------------ geometry

def _conv(layer_type, param):
    return _input(1, 3, 8, 8) + f'layer {{ name: "c" type: "{layer_type}" bottom: "x" top: "y" {param} }}'

BAD_GEOMETRY = [
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 3 stride: 0 }", "stride"),
    ("Convolution", "convolution_param { num_output: 2 kernel_h: 3 kernel_w: 3 stride_h: 0 stride_w: 1 }", "stride"),
    ("Deconvolution", "convolution_param { num_output: 2 kernel_size: 3 stride: 0 }", "stride"),
    ("Im2col", "convolution_param { kernel_size: 3 stride: 0 }", "stride"),
    ("Pooling", "pooling_param { kernel_size: 2 stride: 0 }", "stride"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 0 }", "kernel"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 3 dilation: 0 }", "dilation"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 30 }", "(?i)kernel"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 5 dilation: 4 }", "(?i)kernel"),
    ("Pooling", "pooling_param { kernel_size: 30 }", "empty"),
    ("Pooling", "pooling_param { kernel_size: 3 pad: 3 }", "pad"),
    ("Convolution", "convolution_param { num_output: 0 kernel_size: 3 }", "num_output"),
    ("Convolution", "convolution_param { num_output: 3 kernel_size: 3 group: 2 }", "group"),
    ("Convolution", "convolution_param { num_output: 2 kernel_size: 3 group: 0 }", "group"),
    ("LRN", "lrn_param { local_size: 0 }", "local_size"),
    ("LRN", "lrn_param { local_size: 4 }", "local_size"),
    ("SPP", "spp_param { pyramid_height: 0 }", "pyramid_height"),
]


@pytest.mark.parametrize("layer_type,param,match", BAD_GEOMETRY,
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(BAD_GEOMETRY)])
def test_bad_geometry_is_a_layer_error(layer_type, param, match):
    with pytest.raises(LayerError, match=match) as err:
        _net(_conv(layer_type, param), limit=30)
    assert f"layer 'c' ({layer_type})" in str(err.value)


def test_kernel_larger_than_input_but_padded_is_fine():
    net = _net(_conv("Convolution", "convolution_param { num_output: 2 kernel_size: 12 pad: 2 }"))
    assert net.blobs["y"].shape == (1, 2, 1, 1)
    pool = _net(_conv("Pooling", "pooling_param { kernel_size: 9 pad: 1 }"))
    assert pool.blobs["y"].shape == (1, 3, 2, 2)  # Caffe's ceil rule


def test_zero_sized_dims_build_or_fail_cleanly():
    for dims in [(0, 3, 8, 8), (1, 0, 8, 8), (1, 3, 0, 0)]:
        text = _input(*dims) + 'layer { name: "c" type: "Convolution" bottom: "x" top: "y" ' \
                               'convolution_param { num_output: 2 kernel_size: 1 } }'
        try:
            net = _net(text)
        except NetspecError as e:
            assert "layer 'c' (Convolution)" in str(e)
            continue
        net.forward()
        assert math.prod(net.blobs["y"].shape) == 0
