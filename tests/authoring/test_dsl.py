"""The NetSpec DSL: naming, in-place layers, schema-driven keyword routing, errors."""
import pytest

from netspec.formats import prototxt
from netspec.authoring.dsl import DSLError, NetSpec, layers as L, params as P, to_proto
from netspec.proto import caffe_pb2

CONV = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]

EXPECTED_SMALL_NET = """
layer {
  name: "data"
  type: "Input"
  top: "data"
  top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 dim: 1 dim: 8 dim: 8 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 4
    pad: 1
    kernel_size: 3
    weight_filler { type: "msra" }
  }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "conv1"
  top: "conv1"
}
layer {
  name: "Pooling1"
  type: "Pooling"
  bottom: "conv1"
  top: "Pooling1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "up"
  type: "Deconvolution"
  bottom: "Pooling1"
  top: "up"
  param { lr_mult: 0 }
  convolution_param { num_output: 4 bias_term: false kernel_size: 2 stride: 2 }
}
layer {
  name: "drop"
  type: "Dropout"
  bottom: "up"
  top: "up"
  include { phase: TRAIN }
  dropout_param { dropout_ratio: 0.25 }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "up"
  bottom: "label"
  top: "loss"
  loss_weight: 2
  loss_param { ignore_label: 255 normalization: VALID }
}
"""


def small_net():
    n = NetSpec()
    n.data, n.label = L.Input(ntop=2, shape=[dict(dim=[2, 3, 8, 8]), dict(dim=[2, 1, 8, 8])])
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1, param=CONV,
                            weight_filler=dict(type="msra"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    pool = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)  # never named
    n.up = L.Deconvolution(pool, num_output=4, kernel_size=2, stride=2, bias_term=False,
                           param=[dict(lr_mult=0)])
    n.drop = L.Dropout(n.up, dropout_ratio=0.25, in_place=True,
                       include=dict(phase=caffe_pb2.TRAIN))
    n.loss = L.SoftmaxWithLoss(n.drop, n.label, ignore_label=255, normalization="VALID",
                               loss_weight=2)
    return n


def test_small_net_matches_expected_text():
    net = small_net().to_proto()
    expected = prototxt.parse_net(EXPECTED_SMALL_NET)
    assert net == expected, prototxt.to_text(net)
    # and the written text reads back to the same net
    assert prototxt.parse_net(prototxt.to_text(net)) == net


def test_str_of_to_proto_is_text_format_like_pycaffe():
    text = str(small_net().to_proto())
    assert 'name: "relu1"' in text and "pool: MAX" in text


def test_routing_follows_the_schema():
    lp = to_proto(L.Convolution(L.Input(shape=dict(dim=[1, 1, 4, 4])), num_output=2,
                                kernel_size=3, dilation=2, bias_filler=dict(type="constant",
                                                                            value=0.5))).layer[1]
    assert list(lp.convolution_param.kernel_size) == [3]
    assert list(lp.convolution_param.dilation) == [2]
    assert lp.convolution_param.bias_filler.value == pytest.approx(0.5)
    # Deconvolution uses convolution_param; Python's keywords go to python_param; loss keywords
    # of any loss layer go to loss_param; Scale's filler to scale_param
    x = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    net = to_proto(L.Deconvolution(x, num_output=1, kernel_size=2, stride=2),
                   L.Python(module="m", layer="Cls", param_str="{}", ntop=0),
                   L.SigmoidCrossEntropyLoss(x, x, ignore_label=3),
                   L.Scale(x, filler=dict(type="constant", value=0.01)))
    by_type = {l.type: l for l in net.layer}
    assert by_type["Deconvolution"].convolution_param.stride == [2]
    assert by_type["Python"].python_param.module == "m"
    assert by_type["SigmoidCrossEntropyLoss"].loss_param.ignore_label == 3
    assert by_type["Scale"].scale_param.filler.value == pytest.approx(0.01)


def test_explicit_param_messages_and_enums():
    x = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    lp = to_proto(L.Pooling(x, pooling_param=dict(pool="AVE", kernel_size=2))).layer[1]
    assert lp.pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    lp = to_proto(L.Eltwise(x, x, operation=P.Eltwise.PROD)).layer[1]
    assert lp.eltwise_param.operation == caffe_pb2.EltwiseParameter.PROD
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Deconvolution is caffe_pb2.ConvolutionParameter
    # a message instance is accepted where a dict is
    spec = caffe_pb2.ParamSpec(lr_mult=3)
    lp = to_proto(L.Convolution(x, num_output=1, kernel_size=1, param=[spec])).layer[1]
    assert lp.param[0].lr_mult == 3


def test_auto_names_count_per_type_and_explicit_names_may_repeat():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    a = L.ReLU(n.data)
    b = L.ReLU(a)
    c = L.Sigmoid(b)
    n.out = L.Eltwise(c, L.ReLU(c), name="fuse")
    n.out2 = L.Eltwise(n.out, n.out, name="fuse")
    net = n.to_proto()
    assert [l.name for l in net.layer] == ["data", "ReLU1", "ReLU2", "Sigmoid1", "ReLU3", "fuse",
                                           "fuse"]
    assert [list(l.top) for l in net.layer][1:5] == [["ReLU1"], ["ReLU2"], ["Sigmoid1"], ["ReLU3"]]
    assert list(net.layer[-1].top) == ["out2"] and list(net.layer[-1].bottom) == ["out", "out"]


def test_in_place_layers_write_their_bottom():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    n.a = L.ReLU(n.data)
    n.b = L.ReLU(n.a, in_place=True)
    n.c = L.TanH(n.b, in_place=True)
    n.d = L.Power(n.c)
    layers = n.to_proto().layer
    assert [(l.name, list(l.bottom), list(l.top)) for l in layers] == [
        ("data", [], ["data"]), ("a", ["data"], ["a"]), ("b", ["a"], ["a"]),
        ("c", ["a"], ["a"]), ("d", ["a"], ["d"])]


def test_multiple_tops_and_no_tops():
    n = NetSpec()
    n.data, n.label = L.Python(module="mod", layer="Cls", ntop=2)
    silence = L.Silence(n.label, ntop=0)
    n.silence = silence
    net = n.to_proto()
    assert list(net.layer[0].top) == ["data", "label"]
    assert net.layer[1].name == "silence" and not net.layer[1].top
    n2 = NetSpec()
    n2.data = L.Input(shape=dict(dim=[1]))
    assert to_proto(L.Silence(n2.data, ntop=0)).layer[-1].name == "Silence1"


def test_layers_are_emitted_bottoms_first_in_assignment_order():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    late = L.ReLU(n.data)
    n.first = L.Sigmoid(n.data)
    n.second = L.Eltwise(late, n.first)
    assert [l.name for l in n.to_proto().layer] == ["data", "first", "ReLU1", "second"]


def test_netspec_item_access():
    n = NetSpec()
    n["data"] = L.Input(shape=dict(dim=[1]))
    assert n["data"] is n.data and "data" in n and n.keys() == ["data"]
    with pytest.raises(AttributeError):
        n.missing
    with pytest.raises(DSLError):
        n.bad = 3


@pytest.mark.parametrize("make, message", [
    (lambda x: L.Convolution(x, num_outputs=3), "no field 'num_outputs'"),
    (lambda x: L.MyLayer(x, kernel_size=3), "several parameter messages"),
    (lambda x: L.Pooling(x, pool="MAXIMUM"), "not a value of PoolMethod"),
    (lambda x: L.Convolution(x, num_output="three"), "expected an integer"),
    (lambda x: L.Convolution(x, weight_filler="msra"), "expected a dict"),
    (lambda x: L.ReLU(x, top="y"), "set by the graph"),
    (lambda x: L.ReLU(x, x, in_place=True), "as many tops as bottoms"),
    (lambda x: L.ReLU("data"), "not a top"),
])
def test_errors_name_the_problem(make, message):
    x = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    with pytest.raises(DSLError, match=message):
        make(x)


def test_fcn32s_written_with_the_dsl_equals_upstream(shared_dir):
    """The pycaffe idiom (net.py of fcn.berkeleyvision.org) gives upstream's voc-fcn32s net."""
    from netspec.authoring.coord_map import crop

    def conv_relu(bottom, nout, ks=3, stride=1, pad=1):
        conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                             param=CONV)
        return conv, L.ReLU(conv, in_place=True)

    upstream = prototxt.parse_net(
        shared_dir / "upstream_prototxt/fcn.berkeleyvision.org/voc-fcn32s/train.prototxt")
    n = NetSpec()
    n.data, n.label = L.Python(module="voc_layers", layer="SBDDSegDataLayer", ntop=2,
                               param_str=upstream.layer[0].python_param.param_str)
    bottom = n.data
    for stage, (count, width) in enumerate(zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)), 1):
        for i in range(1, count + 1):
            pad = 100 if stage == i == 1 else 1
            n[f"conv{stage}_{i}"], n[f"relu{stage}_{i}"] = conv_relu(bottom, width, pad=pad)
            bottom = n[f"relu{stage}_{i}"]
        n[f"pool{stage}"] = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        bottom = n[f"pool{stage}"]
    n.fc6, n.relu6 = conv_relu(n.pool5, 4096, ks=7, pad=0)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7, n.relu7 = conv_relu(n.drop6, 4096, ks=1, pad=0)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)
    n.score_fr = L.Convolution(n.drop7, num_output=21, kernel_size=1, pad=0, param=CONV)
    n.upscore = L.Deconvolution(n.score_fr, convolution_param=dict(
        num_output=21, kernel_size=64, stride=32, bias_term=False), param=[dict(lr_mult=0)])
    n.score = crop(n.upscore, n.data)
    n.loss = L.SoftmaxWithLoss(n.score, n.label, loss_param=dict(normalize=False,
                                                                 ignore_label=255))
    assert n.to_proto() == upstream
