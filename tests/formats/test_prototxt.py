"""Text-format parsing and writing: upstream files, text-format quirks, error messages (the parser's fuzzing is in
tests/reliability/test_fuzz.py)."""

import os

import pytest

from netspec.formats import prototxt
from netspec.errors import PrototxtError
from netspec.proto import caffe_pb2


def _upstream_files(shared_dir):
    files = sorted((shared_dir / "upstream_prototxt").rglob("*.prototxt"))
    assert files, "no prototxt fixtures found"
    return files


def _parse_any(path):
    """Parse a fixture as a solver when its name says so, else as a net."""
    if "solver" in path.name:
        return prototxt.read_solver(path), prototxt.parse_solver
    return prototxt.read_net(path), prototxt.parse_net


# --------------------------------------------------------------------------------------------
# Upstream fixtures


def test_upstream_prototxt_parse_and_round_trip(shared_dir):
    for path in _upstream_files(shared_dir):
        message, parse = _parse_any(path)
        assert message.ByteSize() > 0, path
        again = parse(prototxt.to_text(message), path=f"{path} (round trip)")
        assert again == message, path


def test_upstream_layer_lines(shared_dir):
    for path in _upstream_files(shared_dir):
        if "solver" in path.name:
            continue
        net, lines = prototxt.parse_net_with_lines(path)
        layers = list(net.layer) or list(net.layers)
        assert len(lines) == len(layers), path
        text_lines = path.read_text().splitlines()
        for layer, line in zip(layers, lines):
            assert text_lines[line - 1].lstrip().startswith("layer"), (path, line)
        assert lines == sorted(lines)


def test_upstream_solver_as_net_says_so(shared_dir):
    solver = next(p for p in _upstream_files(shared_dir) if "solver" in p.name)
    with pytest.raises(PrototxtError, match="looks like a solver prototxt") as info:
        prototxt.read_net(solver)
    assert str(info.value).startswith(f"{solver}:")


# --------------------------------------------------------------------------------------------
# Text-format quirks met in real files


def test_comments():
    net = prototxt.parse_net('# a net\nname: "n"  # trailing\n# layer { name: "x" }\n')
    assert net.name == "n" and not net.layer


def test_colon_without_space():
    solver = prototxt.parse_solver("snapshot:5000\nbase_lr:1e-10\nlr_policy:'fixed'")
    assert solver.snapshot == 5000
    assert solver.base_lr == pytest.approx(1e-10)
    assert solver.lr_policy == "fixed"


def test_colon_before_message():
    net = prototxt.parse_net('layer: { name: "a" convolution_param: { num_output: 3 } }')
    assert net.layer[0].convolution_param.num_output == 3


def test_one_line_nested_and_angle_brackets():
    net = prototxt.parse_net('layer { name: "p" pooling_param < pool: AVE kernel_size: 2 > }')
    assert net.layer[0].pooling_param.pool == caffe_pb2.PoolingParameter.AVE


def test_repeated_scalars_by_repetition_and_list():
    net = prototxt.parse_net(
        "input_shape { dim: 1 dim: 3 dim: 5 dim: 7 }\n"
        'layer { eltwise_param { coeff: 0.5 coeff: 0.5 } }\n'
        "layer { convolution_param { pad: [1, 2] } }")
    assert list(net.input_shape[0].dim) == [1, 3, 5, 7]
    assert list(net.layer[0].eltwise_param.coeff) == [0.5, 0.5]
    assert list(net.layer[1].convolution_param.pad) == [1, 2]


def test_string_escapes():
    net = prototxt.parse_net(
        "layer { python_param { param_str: \"{'split': 'train', \\'x\\': \\\"q\\\"}\" } }\n"
        "name: 'it''s'")
    assert net.layer[0].python_param.param_str == "{'split': 'train', 'x': \"q\"}"
    assert net.name == "its"  # adjacent literals concatenate


def test_float_forms_and_enums():
    solver = prototxt.parse_solver(
        "base_lr: 1e-06 momentum: 0.99 weight_decay: 0.0005 solver_mode: GPU\n"
        "delta: .5 gamma: 1")
    assert solver.base_lr == pytest.approx(1e-6)
    assert solver.solver_mode == caffe_pb2.SolverParameter.GPU
    assert solver.delta == 0.5 and solver.gamma == 1.0


def test_v1_enum_layer_type():
    net = prototxt.parse_net('layers { name: "c" type: CONVOLUTION blobs_lr: 1 blobs_lr: 2 }')
    assert net.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION
    assert list(net.layers[0].blobs_lr) == [1.0, 2.0]


def test_extension_fields_parse():
    net = prototxt.parse_net(
        'layer { type: "Interp" interp_param { zoom_factor: 8 } }\n'
        "layer { pooling_param { round_mode: FLOOR } }\n"
        "layer { loss_param { class_weight: 1 class_weight: 4.5 } }")
    assert net.layer[0].interp_param.zoom_factor == 8
    assert net.layer[1].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    assert list(net.layer[2].loss_param.class_weight) == [1.0, 4.5]


def test_bytes_and_message_class_input():
    net = prototxt.parse_text(b'name: "b"', caffe_pb2.NetParameter)
    assert net.name == "b"


def test_round_trip_preserves_float32_values():
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="c", type="Convolution")
    layer.param.add(lr_mult=0.1, decay_mult=1e-7)
    layer.convolution_param.weight_filler.std = 0.01
    assert prototxt.parse_net(prototxt.to_text(net)) == net
    assert "lr_mult: 0.1\n" in prototxt.to_text(net)


# --------------------------------------------------------------------------------------------
# Files


def test_write_text_atomic(tmp_path):
    net = prototxt.parse_net('name: "w" layer { name: "a" type: "ReLU" }')
    target = tmp_path / "net.prototxt"
    target.write_text("old")
    prototxt.write_text(net, target)
    assert prototxt.read_net(target) == net
    assert sorted(os.listdir(tmp_path)) == ["net.prototxt"]  # no temp file left behind


def test_write_text_failure_leaves_old_file(tmp_path, monkeypatch):
    target = tmp_path / "net.prototxt"
    target.write_text('name: "old"')

    def broken(_message):
        raise RuntimeError("boom")

    monkeypatch.setattr(prototxt, "to_text", broken)
    with pytest.raises(RuntimeError):
        prototxt.write_text(caffe_pb2.NetParameter(name="new"), target)
    assert target.read_text() == 'name: "old"'
    assert sorted(os.listdir(tmp_path)) == ["net.prototxt"]


def test_path_or_text(tmp_path):
    path = tmp_path / "a.prototxt"
    path.write_text('name: "file"')
    assert prototxt.parse_net(path).name == "file"
    assert prototxt.parse_net(str(path)).name == "file"
    assert prototxt.parse_net('name: "text"').name == "text"
    with pytest.raises(PrototxtError, match="missing.prototxt"):
        prototxt.parse_net(str(tmp_path / "missing.prototxt"))
    with pytest.raises(PrototxtError, match="missing.prototxt: cannot read"):
        prototxt.read_net(tmp_path / "missing.prototxt")


def test_layer_lines():
    text = (
        '# layer { in a comment }\n'        # 1
        'name: "layer {"\n'                 # 2
        'layer {\n'                         # 3
        '  name: "a"  include { phase: TRAIN }\n'
        '}\n'
        'layer: { name: "b" }  layer {\n'   # 6, 6
        '}\n'
        'layers\n'                          # 8
        '<\n'
        '>\n'
    )
    assert prototxt.layer_lines(text) == [3, 6, 6, 8]


# --------------------------------------------------------------------------------------------
# Errors


def test_error_has_file_line_col(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  bottom "b"\n}\n')
    with pytest.raises(PrototxtError) as info:
        prototxt.read_net(path)
    assert str(info.value).startswith(f"{path}:4:10: ")


def test_error_names_string_source_and_path_keyword():
    with pytest.raises(PrototxtError, match=r"^<string>:1:"):
        prototxt.parse_net("layer {")
    with pytest.raises(PrototxtError, match=r"^my.prototxt:2:"):
        prototxt.parse_net('name: "a"\nnope: 1', path="my.prototxt")


def test_fork_field_message():
    # A field of a fork netspec does not read (YOLO's Caffe ports); the forks it reads parse (docs/caffe_forks.md).
    text = 'layer {\n  name: "n"\n  type: "Region"\n  region_param { classes: 20 }\n}'
    with pytest.raises(PrototxtError) as info:
        prototxt.parse_net(text, path="yolo.prototxt")
    message = str(info.value)
    assert message.startswith("yolo.prototxt:4:3: no field named 'region_param'")
    assert "in neither BVLC Caffe's schema nor the forks netspec reads" in message
    assert "netspec.proto.load_proto('path/to/caffe.proto')" in message
    assert "--proto" in message


def test_missing_closing_brace_is_named_not_blamed_on_a_fork():
    text = ('layer {\n  name: "c" type: "Convolution" bottom: "x" top: "y"\n'
            '  convolution_param { num_output: 3 kernel_size: 3\n'
            '  param { lr_mult: 1 }\n}\n')
    with pytest.raises(PrototxtError) as info:
        prototxt.parse_net(text, path="net.prototxt")
    message = str(info.value)
    assert message.startswith("net.prototxt:4:3: no field named 'param' in caffe.ConvolutionParameter")
    assert "a '}' is probably missing (the ConvolutionParameter block is not closed" in message
    assert "fork" not in message


def test_typo_suggests_field():
    with pytest.raises(PrototxtError, match="did you mean 'num_output'"):
        prototxt.parse_net("layer { convolution_param { num_ouput: 3 } }")


@pytest.mark.parametrize("field", ["train_net: 'a'", "base_lr: 0.1", "net: 'a'", "max_iter: 3"])
def test_solver_given_as_net(field):
    with pytest.raises(PrototxtError, match="looks like a solver prototxt; pass it to the solver"):
        prototxt.parse_net(f"{field}\n")


def test_net_given_as_solver():
    with pytest.raises(PrototxtError, match="looks like a net prototxt"):
        prototxt.parse_solver('name: "n"\nlayer { name: "a" }')


def test_duplicate_optional_field_is_an_error():
    with pytest.raises(PrototxtError, match=r'^<string>:1:\d+: .*multiple "name"'):
        prototxt.parse_net('name: "a" name: "b"')


def test_missing_required_field_names_layer_line():
    text = 'name: "n"\nlayer { name: "a" }\nlayer {\n  name: "c"\n  clip_param { min: 0 }\n}'
    with pytest.raises(PrototxtError, match=r"^<string>:3: required field.*layer\[1\]\.clip_param\.max"):
        prototxt.parse_net(text)


def test_bad_utf8():
    with pytest.raises(PrototxtError, match=r"^x.prototxt:2:8: .*UTF-8"):
        prototxt.parse_net(b'name: "a"\nname: "\xff"', path="x.prototxt")


def test_bad_enum_and_range():
    with pytest.raises(PrototxtError, match="MAXX"):
        prototxt.parse_net("layer { pooling_param { pool: MAXX } }")
    with pytest.raises(PrototxtError, match=r"^<string>:1:\d+: .*out of range"):
        prototxt.parse_net("input_dim: 99999999999")


# Fuzzing the parser (mutated nets and solvers, random bytes): tests/reliability/test_fuzz.py.


def test_a_net_path_that_is_no_regular_file_is_refused_before_reading(tmp_path):
    import netspec
    fifo = tmp_path / "net.fifo"
    os.mkfifo(fifo)
    for path, words in (("/dev/zero", "not a regular file"), (str(fifo), "not a regular file"),
                        (str(tmp_path), "is a directory")):
        with pytest.raises(PrototxtError, match=words):
            netspec.Net(path, netspec.TEST)   # a FIFO would block for ever, /dev/zero never ends


def test_an_oversized_or_binary_prototxt_is_refused(tmp_path, monkeypatch):
    big = tmp_path / "big.prototxt"
    with open(big, "wb") as f:
        f.truncate(2 ** 20 + 1)
    monkeypatch.setattr(prototxt, "MAX_TEXT_BYTES", 2 ** 20)
    with pytest.raises(PrototxtError, match="more than the 1 MiB a net or solver prototxt may have"):
        prototxt.read_net(big)
    small = tmp_path / "nul.prototxt"
    small.write_bytes(b'name: "a"\nlayer {\x00}')
    with pytest.raises(PrototxtError, match=r"nul.prototxt:2: the file contains NUL bytes: it is a binary file"):
        prototxt.read_net(small)


def test_a_utf8_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.prototxt"
    path.write_bytes(b'\xef\xbb\xbfname: "bom"\n')
    assert prototxt.read_net(path).name == "bom"
