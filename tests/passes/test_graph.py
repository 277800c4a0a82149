"""Proto-to-proto passes: NetStateRule filtering, Caffe's Split insertion and wiring checks."""
import pytest
from google.protobuf import text_format

from netspec.errors import LayerError, PrototxtError
from netspec.passes.graph import filter_net, insert_splits, net_state, prepare_net
from netspec.proto import caffe_pb2


def net(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def names(n):
    return [(l.name, l.type, list(l.bottom), list(l.top)) for l in n.layer]


def test_split_layout_matches_caffe_written_caffemodel(shared_dir):
    case = shared_dir / "golden" / "formats" / "fanout_split_caffemodel"
    ours, _ = prepare_net(net((case / "net.prototxt").read_text()), caffe_pb2.TEST)
    text = (case / "caffemodel_layout.txt").read_text()
    theirs = net("\n".join(l for l in text.splitlines() if not l.startswith("#")))
    assert names(ours) == names(theirs)


def test_split_after_inplace_named_after_the_inplace_layer():
    n = net('layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 } } }'
            'layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }'
            'layer { name: "sig" type: "Sigmoid" bottom: "x" top: "s" }'
            'layer { name: "tanh" type: "TanH" bottom: "x" top: "t" }')
    out = insert_splits(n)
    assert names(out)[2] == ("x_relu_0_split", "Split", ["x"], ["x_relu_0_split_0", "x_relu_0_split_1"])
    assert list(out.layer[3].bottom) == ["x_relu_0_split_0"]
    assert list(out.layer[4].bottom) == ["x_relu_0_split_1"]


def test_loss_weight_use_counts_as_consumer():
    n = net('layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 } } }'
            'layer { name: "p" type: "Power" bottom: "x" top: "y" loss_weight: 2 }'
            'layer { name: "q" type: "TanH" bottom: "y" top: "z" }')
    out = insert_splits(n)
    split = out.layer[2]
    assert split.type == "Split" and list(split.top) == ["y_p_0_split_0", "y_p_0_split_1"]
    assert list(split.loss_weight) == [2.0, 0.0]


def test_inplace_on_fanout_rejected_as_caffe_does(shared_dir):
    n = net((shared_dir / "golden" / "formats" / "reject_inplace_on_fanout" / "net.prototxt").read_text())
    with pytest.raises(PrototxtError, match="Top blob 'x' produced by multiple sources"):
        prepare_net(n, caffe_pb2.TEST)


def test_unknown_bottom_names_layer_and_index():
    n = net('layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 } } }'
            'layer { name: "e" type: "Eltwise" bottom: "x" bottom: "nope" top: "y" }')
    with pytest.raises(PrototxtError, match=r"layer 'e' \(Eltwise\): Unknown bottom blob 'nope' \(bottom index 1\)"):
        prepare_net(n, caffe_pb2.TEST, where=lambda i: f"net.prototxt:{i + 1}: ")


def test_filter_by_phase_stage_level():
    n = net('layer { name: "a" type: "Input" top: "x" include { phase: TRAIN } }'
            'layer { name: "b" type: "Input" top: "x" include { phase: TEST } }'
            'layer { name: "c" type: "ReLU" bottom: "x" top: "y" exclude { stage: "deploy" } }'
            'layer { name: "d" type: "ReLU" bottom: "x" top: "z" include { min_level: 2 } }')
    train = filter_net(n, net_state(n, caffe_pb2.TRAIN))
    assert [l.name for l in train.layer] == ["a", "c"]
    deploy = filter_net(n, net_state(n, caffe_pb2.TEST, 3, ["deploy"]))
    assert [l.name for l in deploy.layer] == ["b", "d"]


def test_include_and_exclude_together_is_an_error():
    n = net('layer { name: "a" type: "ReLU" bottom: "x" top: "x" include { phase: TRAIN } exclude { phase: TEST } }')
    with pytest.raises(PrototxtError, match="both include and exclude"):
        filter_net(n, net_state(n, caffe_pb2.TRAIN))
