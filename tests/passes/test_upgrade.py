"""netspec.passes.upgrade: Caffe's upgrade_proto.cpp passes (V0 -> V1 -> V2, data transformation,
input fields, BatchNorm, solver type) and tools/upgrade_net_proto.py.

Reference: golden/formats/v1_vgg_like holds a V1 prototxt and caffemodel and what Caffe's
upgrade_net_proto_text / upgrade_net_proto_binary made of them (with their log lines).
"""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.formats import binary, prototxt
from netspec.passes import upgrade
from netspec.errors import PrototxtError
from netspec.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter
V1_CASE = "golden/formats/v1_vgg_like"
TOOL = Path(__file__).resolve().parents[2] / "tools" / "upgrade_net_proto.py"


def _tool():
    spec = importlib.util.spec_from_file_location("upgrade_net_proto", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _meta(shared_dir):
    return json.loads((shared_dir / V1_CASE / "meta.json").read_text())


# ----------------------------------------------------------------------------- golden V1 net


def test_v1_prototxt_upgrades_like_caffe(shared_dir):
    case = shared_dir / V1_CASE
    net = prototxt.read_net(case / "net.prototxt")
    original = caffe_pb2.NetParameter()
    original.CopyFrom(net)
    assert upgrade.needs_upgrade(net)
    upgraded, log = upgrade.upgrade_net(net, "net.prototxt")
    assert upgraded == prototxt.read_net(case / "upgraded.prototxt")
    assert log == _meta(shared_dir)["upgrade_text_log"][:-1]  # last line: the tool's "Wrote"
    assert net == original  # not modified without inplace=True
    assert not upgrade.needs_upgrade(upgraded)


def test_v1_caffemodel_upgrades_like_caffe(shared_dir, tmp_path):
    case = shared_dir / V1_CASE
    model = binary.read_caffemodel(case / "weights.caffemodel")
    upgraded, log = upgrade.upgrade_caffemodel(model, "weights.caffemodel")
    assert log == _meta(shared_dir)["upgrade_binary_log"][:-1]
    expected = caffe_pb2.NetParameter.FromString((case / "upgraded.caffemodel").read_bytes())
    # Metadata: exactly Caffe's layout (legacy num/channels/height/width dims kept).
    layout = prototxt.parse_text((case / "upgraded_caffemodel_layout.txt").read_text(),
                                 caffe_pb2.NetParameter)
    assert upgraded.net == layout
    # Arrays follow their layers; the Input layer has none.
    assert upgraded.blobs[0] == [] and upgraded.net.layer[0].type == "Input"
    for layer, arrays in zip(expected.layer, upgraded.blobs):
        assert len(arrays) == len(layer.blobs)
        for a, b in zip(arrays, layer.blobs):
            assert a.shape == (b.num, b.channels, b.height, b.width)
            assert np.array_equal(a.ravel(), np.array(b.data, np.float32))
    # Written back: byte for byte what upgrade_net_proto_binary wrote.
    out = tmp_path / "upgraded.caffemodel"
    binary.write_caffemodel(out, upgraded)
    assert out.read_bytes() == (case / "upgraded.caffemodel").read_bytes()
    # The same upgrade on the fully parsed message.
    full, log2 = upgrade.upgrade_net(binary.read_net_binary(case / "weights.caffemodel"),
                                     "weights.caffemodel")
    assert full == expected and log2 == log
    assert model.net.layers and not model.net.layer  # the input model is untouched


def test_v1_caffemodel_weights_match_forward_params(shared_dir):
    meta = _meta(shared_dir)
    model = binary.read_caffemodel(shared_dir / V1_CASE / "weights.caffemodel")
    got = [(name, ltype, [list(np.squeeze(a).shape) if legacy else list(a.shape)
                          for a, legacy in blobs])
           for name, ltype, blobs in upgrade.weight_layers(model)]
    want = [(l["name"], l["type"], [[d for d in s if d != 1] or [1] for s in l["param_shapes"]])
            for l in meta["layers"]]
    assert [(n, t) for n, t, _ in got] == [(n, t) for n, t, _ in want]
    assert [s for _, _, s in got] == [s for _, _, s in want]


def test_vgg19_deploy_upgrades_cleanly(shared_dir):
    path = shared_dir / "upstream_prototxt/_reference_vgg/VGG_ILSVRC_19_layers_deploy.prototxt"
    net = prototxt.read_net(path)
    upgraded, log = upgrade.upgrade_net(net, str(path))
    assert log[0] == f"Attempting to upgrade input file specified using deprecated " \
                     f"V1LayerParameter: {path}"
    assert "Successfully upgraded file specified using deprecated input fields." in log
    assert not upgraded.layers and not upgraded.input and not upgraded.input_dim
    first = upgraded.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data"])
    assert list(first.input_param.shape[0].dim) == [10, 3, 224, 224]
    assert len(upgraded.layer) == len(net.layers) + 1
    types = [l.type for l in upgraded.layer[1:]]
    assert types.count("Convolution") == 16 and types.count("InnerProduct") == 3
    assert set(types) == {"Convolution", "ReLU", "Pooling", "InnerProduct", "Dropout",
                          "Softmax"}
    assert [l.name for l in upgraded.layer[1:]] == [l.name for l in net.layers]
    assert upgraded.layer[1].convolution_param == net.layers[0].convolution_param


def test_current_upstream_nets_need_no_upgrade(shared_dir):
    files = [p for p in sorted(shared_dir.glob("upstream_prototxt/**/*.prototxt"))
             if "solver" not in p.name and "_reference_vgg" not in str(p)]
    assert len(files) >= 30
    for path in files:
        net = prototxt.read_net(path)
        assert not upgrade.needs_upgrade(net), str(path)
        upgraded, log = upgrade.upgrade_net(net, str(path))
        assert upgraded == net and log == [], str(path)
    for path in sorted(shared_dir.glob("upstream_prototxt/**/*solver*.prototxt")):
        solver = prototxt.read_solver(path)
        assert upgrade.upgrade_solver(solver, str(path)) == (solver, [])


# ----------------------------------------------------------------------------- V1 -> V2 details


def test_every_v1_layer_type_becomes_a_string():
    net = caffe_pb2.NetParameter()
    names = V1.LayerType.keys()
    for name in names:
        net.layers.add(name=name.lower(), type=V1.LayerType.Value(name))
    upgraded, log = upgrade.upgrade_net(net)
    assert [l.type for l in upgraded.layer] == [upgrade.V1_LAYER_TYPE_NAMES[n] for n in names]
    assert set(upgrade.V1_LAYER_TYPE_NAMES) == set(names)
    assert upgrade.v1_layer_type_name(V1.SOFTMAX_LOSS) == "SoftmaxWithLoss"
    assert upgrade.v1_layer_type_name(V1.DECONVOLUTION) == "Deconvolution"
    assert log[-1] == "Successfully upgraded file specified using deprecated V1LayerParameter"


def test_v1_param_specs_and_params_are_copied():
    net = prototxt.parse_net("""
        name: "p"
        layers {
          name: "conv" type: CONVOLUTION bottom: "x" top: "y"
          blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
          param: "w_shared" param: "b_shared"
          blob_share_mode: PERMISSIVE
          loss_weight: 0.5
          include { phase: TRAIN }
          exclude { stage: "deploy" }
          convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 }
          transform_param { scale: 0.5 }
          loss_param { ignore_label: 255 }
        }
        layers {
          name: "ip" type: INNER_PRODUCT bottom: "y" top: "z" blobs_lr: 3
          inner_product_param { num_output: 4 }
        }
        layers {
          name: "pool" type: POOLING bottom: "z" top: "p"
          pooling_param { pool: AVE kernel_size: 2 stride: 2 }
        }
        layers { name: "data" type: DATA top: "d" data_param { source: "db" batch_size: 4 } }
    """)
    upgraded, _ = upgrade.upgrade_net(net)
    conv, ip, pool, data = upgraded.layer
    assert (conv.name, conv.type, list(conv.bottom), list(conv.top)) == (
        "conv", "Convolution", ["x"], ["y"])
    assert [(p.name, p.lr_mult, p.decay_mult) for p in conv.param] == [
        ("w_shared", 1, 1), ("b_shared", 2, 0)]
    assert conv.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert not conv.param[1].HasField("share_mode")
    assert list(conv.loss_weight) == [0.5]
    assert conv.include[0].phase == caffe_pb2.TRAIN and conv.exclude[0].stage == ["deploy"]
    assert conv.convolution_param == net.layers[0].convolution_param
    assert conv.transform_param.scale == 0.5 and conv.loss_param.ignore_label == 255
    assert [(p.lr_mult, p.HasField("decay_mult")) for p in ip.param] == [(3, False)]
    assert ip.inner_product_param.num_output == 4
    assert pool.pooling_param == net.layers[2].pooling_param and not pool.param
    assert data.type == "Data" and data.data_param.source == "db"


def test_share_mode_without_param_names():
    net = prototxt.parse_net('layers { name: "a" type: INNER_PRODUCT blob_share_mode: STRICT '
                             'blob_share_mode: PERMISSIVE }')
    layer = upgrade.upgrade_net(net)[0].layer[0]
    assert [p.share_mode for p in layer.param] == [caffe_pb2.ParamSpec.STRICT,
                                                   caffe_pb2.ParamSpec.PERMISSIVE]
    assert all(p.HasField("share_mode") and not p.HasField("name") for p in layer.param)


def test_upgrade_follows_a_schema_loaded_at_run_time(shared_dir, tmp_path):
    # Nets parsed after netspec.proto.load_proto() are messages of another descriptor pool;
    # the upgrade and the binary reader must build messages of that same schema.
    pytest.importorskip("grpc_tools")
    from netspec import proto

    schema = Path(proto.__file__).parent / "caffe.proto"
    fork = proto.load_proto(schema)
    try:
        net = prototxt.read_net(shared_dir / V1_CASE / "net.prototxt")
        assert type(net) is fork.NetParameter
        upgraded, _ = upgrade.upgrade_net(net, "net.prototxt")
        assert type(upgraded) is fork.NetParameter and upgraded.layer[0].type == "Input"
        model = binary.read_caffemodel(shared_dir / V1_CASE / "weights.caffemodel")
        assert type(model.net) is fork.NetParameter
        up_model, _ = upgrade.upgrade_caffemodel(model)
        out = tmp_path / "up.caffemodel"
        binary.write_caffemodel(out, up_model)
        assert out.read_bytes() == (shared_dir / V1_CASE / "upgraded.caffemodel").read_bytes()
        solver = prototxt.parse_solver("solver_type: NESTEROV")
        assert upgrade.upgrade_solver(solver)[0].type == "Nesterov"
    finally:
        proto.reset_proto()


def test_both_layer_and_layers_is_fatal():
    net = caffe_pb2.NetParameter()
    net.layer.add(name="new", type="ReLU")
    net.layers.add(name="old", type=V1.RELU)
    with pytest.raises(PrototxtError, match="both 'layer' and 'layers'"):
        upgrade.upgrade_net(net)


def test_data_transformation_upgrade():
    net = prototxt.parse_net("""
        layers { name: "d" type: DATA top: "x"
                 data_param { source: "db" scale: 0.5 mean_file: "m.binaryproto"
                              crop_size: 7 mirror: true } }
        layers { name: "i" type: IMAGE_DATA top: "y" image_data_param { source: "l" scale: 2 } }
        layers { name: "w" type: WINDOW_DATA top: "z" window_data_param { crop_size: 3 } }
    """)
    upgraded, log = upgrade.upgrade_net(net, "old.prototxt")
    d, i, w = upgraded.layer
    assert (d.transform_param.scale, d.transform_param.mean_file, d.transform_param.crop_size,
            d.transform_param.mirror) == (0.5, "m.binaryproto", 7, True)
    assert not d.data_param.HasField("scale") and d.data_param.source == "db"
    assert i.transform_param.scale == 2 and not i.image_data_param.HasField("scale")
    assert w.transform_param.crop_size == 3
    assert log[:3] == [
        "Attempting to upgrade input file specified using deprecated transformation "
        "parameters: old.prototxt",
        "Successfully upgraded file specified using deprecated data transformation parameters.",
        "Note that future Caffe releases will only support transform_param messages for "
        "transformation fields."]


# ----------------------------------------------------------------------------- V0


V0_NET = """
name: "v0net"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1
          biasterm: false weight_filler { type: "gaussian" std: 0.01 }
          blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 pad: 1 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.7 k: 2 }
         bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 5 bias_filler { value: 0.1 } }
         bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""


def test_v0_net_upgrades_to_current():
    upgraded, log = upgrade.upgrade_net(prototxt.parse_net(V0_NET), "v0.prototxt")
    assert log[0] == "Attempting to upgrade input file specified using deprecated " \
                     "V0LayerParameter: v0.prototxt"
    assert log[1] == "Successfully upgraded file specified using deprecated V0LayerParameter"
    assert log[2].startswith("Note that future Caffe releases will not support V0NetParameter")
    assert "Successfully upgraded file specified using deprecated V1LayerParameter" in log
    assert "Successfully upgraded file specified using deprecated input fields." in log
    assert upgraded.name == "v0net"
    names = [l.name for l in upgraded.layer]
    assert names == ["input", "conv1", "relu1", "pool1", "norm1", "fc", "drop", "prob"]
    types = [l.type for l in upgraded.layer]
    assert types == ["Input", "Convolution", "ReLU", "Pooling", "LRN", "InnerProduct",
                     "Dropout", "Softmax"]
    conv = upgraded.layer[1]
    assert list(conv.bottom) == ["data"]  # the padding layer is folded away...
    cp = conv.convolution_param
    assert list(cp.pad) == [2] and list(cp.kernel_size) == [3] and list(cp.stride) == [2]
    assert (cp.num_output, cp.bias_term, cp.group, cp.weight_filler.std) == (4, False, 1,
                                                                             pytest.approx(0.01))
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    pp = upgraded.layer[3].pooling_param
    assert (pp.pool, pp.kernel_size, pp.stride, pp.pad) == (
        caffe_pb2.PoolingParameter.AVE, 2, 2, 1)
    lrn = upgraded.layer[4].lrn_param
    assert (lrn.local_size, lrn.alpha, lrn.beta, lrn.k) == (3, 0.5, pytest.approx(0.7), 2)
    fc = upgraded.layer[5].inner_product_param
    assert fc.num_output == 5 and fc.bias_filler.value == pytest.approx(0.1)
    assert upgraded.layer[6].dropout_param.dropout_ratio == pytest.approx(0.3)
    assert list(upgraded.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]


def test_v0_problems_are_logged_or_fatal():
    net = prototxt.parse_net("""
        input: "x"
        layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "y" }
    """)
    upgraded, log = upgrade.upgrade_net(net)
    assert "Unknown parameter num_output for layer type relu" in log
    assert any(l.startswith("Warning: had one or more problems upgrading V0NetParameter")
               for l in log)
    assert upgraded.layer[0].type == "ReLU"
    unknown = prototxt.parse_net('layers { layer { name: "q" type: "quux" } }')
    with pytest.raises(PrototxtError, match="Unknown layer name: quux"):
        upgrade.upgrade_net(unknown)
    bad_pad = prototxt.parse_net("""
        input: "x"
        layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }
        layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }
    """)
    with pytest.raises(PrototxtError, match="Padding layer input to non-convolutional"):
        upgrade.upgrade_net(bad_pad)
    dangling = prototxt.parse_net('layers { layer { name: "r" type: "relu" } bottom: "nope" }')
    with pytest.raises(PrototxtError, match="Unknown blob input nope"):
        upgrade.upgrade_net(dangling)


def test_v0_caffemodel_blobs_follow_their_layer(tmp_path):
    net = prototxt.parse_net(V0_NET)
    w = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3)
    conv = net.layers[1].layer
    conv.blobs.add().CopyFrom(binary.array_to_blob(w))
    path = tmp_path / "v0.caffemodel"
    binary.write_net_binary(path, net)
    assert path.read_bytes() == net.SerializeToString()
    model = binary.read_caffemodel(path)
    upgraded, _ = upgrade.upgrade_caffemodel(model)
    by_name = {l.name: a for l, a in zip(upgraded.net.layer, upgraded.blobs)}
    assert np.array_equal(by_name["conv1"][0], w)
    assert all(not a for n, a in by_name.items() if n != "conv1")
    full, _ = upgrade.upgrade_net(binary.read_net_binary(path))
    assert full.layer[1].blobs[0] == binary.array_to_blob(w)


# ----------------------------------------------------------------------------- input, BatchNorm


def test_input_shape_and_multiple_inputs():
    net = prototxt.parse_net("""
        input: "a" input: "b"
        input_shape { dim: 1 dim: 2 } input_shape { dim: 3 }
        layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" }
    """)
    upgraded, log = upgrade.upgrade_net(net)
    first = upgraded.layer[0]
    assert list(first.top) == ["a", "b"]
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 2], [3]]
    assert [l.name for l in upgraded.layer] == ["input", "c"]
    assert log[-1] == "Note that future Caffe releases will only support input layers and " \
                      "not input fields."
    dims = prototxt.parse_net('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 '
                              'input_dim: 4 input_dim: 5 input_dim: 6 input_dim: 7 input_dim: 8')
    first = upgrade.upgrade_net(dims)[0].layer[0]
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    short = prototxt.parse_net('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 '
                               'input_dim: 4')
    with pytest.raises(PrototxtError, match="input_dim"):
        upgrade.upgrade_net(short)


def test_input_without_dims_is_dropped():
    # A legacy caffemodel keeps `input` but no dims: Caffe just strips the field.
    net = caffe_pb2.NetParameter(input=["data"])
    net.layer.add(name="conv", type="Convolution")
    upgraded, log = upgrade.upgrade_net(net)
    assert [l.name for l in upgraded.layer] == ["conv"] and not upgraded.input
    assert log[1] == "Successfully upgraded file specified using deprecated input fields."


def test_batch_norm_param_upgrade():
    net = prototxt.parse_net("""
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
                param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
        layer { name: "bn2" type: "BatchNorm" bottom: "x" top: "y" }
        layer { name: "s" type: "Scale" bottom: "y" top: "y"
                param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }
    """)
    assert upgrade.needs_upgrade(net)
    upgraded, log = upgrade.upgrade_net(net, "bn.prototxt")
    bn = upgraded.layer[0]
    # BVLC master keeps the 3 specs and zeroes lr_mult and decay_mult.
    assert [(p.lr_mult, p.decay_mult) for p in bn.param] == [(0, 0)] * 3
    assert all(p.HasField("decay_mult") for p in bn.param)
    assert not upgraded.layer[1].param and upgraded.layer[2] == net.layer[2]
    assert log == ["Attempting to upgrade batch norm layers using deprecated params: "
                   "bn.prototxt",
                   "Successfully upgraded batch norm layers using deprecated params."]
    assert not upgrade.needs_upgrade(prototxt.parse_net(
        'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }'))


def test_inplace_upgrade_returns_the_same_message():
    net = caffe_pb2.NetParameter(input=["x"], input_dim=[1, 1, 1, 1])
    upgraded, _ = upgrade.upgrade_net(net, inplace=True)
    assert upgraded is net and net.layer[0].type == "Input"


# ----------------------------------------------------------------------------- solver


def test_solver_type_upgrade():
    for enum_name, type_name in [("SGD", "SGD"), ("NESTEROV", "Nesterov"),
                                 ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
                                 ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")]:
        solver = prototxt.parse_solver(f"base_lr: 0.1 solver_type: {enum_name}")
        assert upgrade.solver_needs_upgrade(solver)
        upgraded, log = upgrade.upgrade_solver(solver, "s.prototxt")
        assert upgraded.type == type_name and not upgraded.HasField("solver_type")
        assert solver.HasField("solver_type")  # input untouched
        assert log == [
            "Attempting to upgrade input file specified using deprecated 'solver_type' field "
            "(enum)': s.prototxt",
            "Successfully upgraded file specified using deprecated 'solver_type' field (enum) "
            "to 'type' field (string).",
            "Note that future Caffe releases will only support 'type' field (string) for a "
            "solver's type."]
    both = prototxt.parse_solver('solver_type: ADAM type: "Adam"')
    with pytest.raises(PrototxtError, match="cannot be both specified"):
        upgrade.upgrade_solver(both)
    current = prototxt.parse_solver('type: "Adam"')
    assert upgrade.upgrade_solver(current) == (current, [])


# ----------------------------------------------------------------------------- tool


def test_tool_text_and_binary(shared_dir, tmp_path, capsys):
    tool = _tool()
    case = shared_dir / V1_CASE
    meta = _meta(shared_dir)
    out_txt = tmp_path / "upgraded.prototxt"
    assert tool.main([str(case / "net.prototxt"), str(out_txt)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [line.replace("net.prototxt", str(case / "net.prototxt"))
                       .replace("upgraded.prototxt", str(out_txt))
                       for line in meta["upgrade_text_log"]]
    assert prototxt.read_net(out_txt) == prototxt.read_net(case / "upgraded.prototxt")

    out_bin = tmp_path / "upgraded.caffemodel"
    assert tool.main([str(case / "weights.caffemodel"), str(out_bin)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"Wrote upgraded NetParameter binary proto to {out_bin}"
    assert len(printed) == len(meta["upgrade_binary_log"])
    assert out_bin.read_bytes() == (case / "upgraded.caffemodel").read_bytes()

    # Already current: Caffe says so and writes the file anyway.
    again = tmp_path / "again.caffemodel"
    assert tool.main([str(out_bin), str(again)]) == 0
    assert f"File already in latest proto format: {out_bin}" in capsys.readouterr().out
    assert again.read_bytes() == out_bin.read_bytes()

    # Unknown extension: detected by content.
    odd = tmp_path / "weights.bin"
    odd.write_bytes((case / "weights.caffemodel").read_bytes())
    assert tool.detect_format(odd) == "binary"
    odd_txt = tmp_path / "net.def"
    odd_txt.write_text((case / "net.prototxt").read_text())
    assert tool.detect_format(odd_txt) == "text"


def test_tool_reports_errors(tmp_path, capsys):
    tool = _tool()
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xa2\x06\xff\xff\xff\x0f")
    assert tool.main([str(bad), str(tmp_path / "out.caffemodel")]) == 1
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out.caffemodel").exists()


def test_unknown_type_in_an_upgraded_net_names_file_line_and_how_to_add_it(tmp_path):
    # input:/input_dim need the upgrade (an Input layer is prepended); the layer lines must survive it.
    path = tmp_path / "old_inputs.prototxt"
    path.write_text('name: "n"\ninput: "data"\ninput_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
                    'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
                    '        convolution_param { num_output: 2 kernel_size: 3 } }\n'
                    'layer { name: "odd" type: "Frobnicate" bottom: "c" top: "d" }\n')
    from netspec.errors import UnknownLayerError
    with pytest.raises(UnknownLayerError) as info:
        netspec.Net(str(path), netspec.TEST)
    message = str(info.value)
    assert message.startswith(f"{path}:6: layer 'odd': Unknown layer type 'Frobnicate'")
    assert "netspec.register('Frobnicate')" in message and "docs/architecture.md" in message


def test_v1_layer_lines_survive_the_upgrade(tmp_path):
    path = tmp_path / "v1.prototxt"
    path.write_text('name: "v1"\ninput: "data"\ninput_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
                    'layers {\n  name: "conv" type: CONVOLUTION bottom: "data" top: "c"\n'
                    '  convolution_param { num_output: 2 kernel_size: 3 }\n}\n'
                    'layers {\n  name: "bad" type: CONVOLUTION bottom: "c" top: "d"\n'
                    '  convolution_param { kernel_size: 3 }\n}\n')
    from netspec.errors import LayerError
    with pytest.raises(LayerError, match=rf"^{re.escape(str(path))}:8: layer 'bad' \(Convolution\)"):
        netspec.Net(str(path), netspec.TEST)


def test_an_old_fork_schema_without_current_fields_gives_a_clear_error(tmp_path):
    # DeepLab v1's caffe.proto predates NetParameter.layer (and PSPNet's InputParameter): loading it with
    # load_proto and reading a net that needs the upgrade must say what is missing, not raise AttributeError.
    pytest.importorskip("grpc_tools")
    from netspec import proto

    old = tmp_path / "caffe.proto"
    old.write_text('syntax = "proto2";\npackage caffe;\n'
                   'message V1LayerParameter { optional string name = 4; repeated string bottom = 2;\n'
                   '  repeated string top = 3; }\n'
                   'message NetParameter { optional string name = 1; repeated string input = 3;\n'
                   '  repeated int32 input_dim = 4; repeated V1LayerParameter layers = 2; }\n')
    proto.load_proto(old)
    try:
        net = prototxt.parse_net('name: "old" input: "data" input_dim: 1 input_dim: 3 input_dim: 4 '
                                 'input_dim: 4 layers { name: "a" bottom: "data" top: "b" }')
        with pytest.raises(PrototxtError, match=r"old.prototxt: the schema in use has no NetParameter\.layer"
                                                r".*drop --proto"):
            upgrade.upgrade_net(net, "old.prototxt")
    finally:
        proto.reset_proto()
