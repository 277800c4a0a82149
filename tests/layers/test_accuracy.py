"""Accuracy: Caffe's tie rule, ignore_label, per-class top, errors (golden parity: tests/test_golden_caffe.py)."""
import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS


def build(text, *shapes):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    lp.bottom.extend(["x", "label"][len(lp.bottom):])
    if not lp.top:
        lp.top.append("acc")
    return LAYERS.get(lp.type).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=caffe_pb2.TEST))


def test_top1_ties_count_against():
    x = torch.tensor([[1.0, 3.0, 3.0], [5.0, 1.0, 0.0], [0.0, 0.0, 2.0], [2.0, 2.0, 2.0]], requires_grad=True)
    label = torch.tensor([1., 0, 1, 0])
    acc = build('type: "Accuracy"', x.shape, label.shape)(x, label)
    assert acc.shape == () and acc.item() == 0.25 and not acc.requires_grad  # the tie at row 0 is a miss
    acc = build('type: "Accuracy" accuracy_param { top_k: 2 }', x.shape, label.shape)(x, label)
    assert acc.item() == 0.5  # row 0 (2 scores >= 3) now counts; row 3 (3 scores >= 2) does not


def test_ignore_and_per_class_spatial():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 2] = 1.0  # class 2 wins everywhere
    label = torch.tensor([[[[2., 0], [255, 2]]]])
    m = build('type: "Accuracy" top: "acc" top: "per_class" accuracy_param { ignore_label: 255 }',
              x.shape, label.shape)
    assert m.top_shapes([x.shape, label.shape]) == [(), (3,)]
    acc, per = m(x, label)
    assert acc.item() == pytest.approx(2 / 3) and per.tolist() == [0.0, 0.0, 1.0]  # class 1: never labelled
    acc = build('type: "Accuracy" accuracy_param { ignore_label: 255 }', (1, 3), (1,))(
        torch.zeros(1, 3), torch.tensor([255.]))
    assert acc.item() == 0.0  # nothing left to count


def test_errors():
    with pytest.raises(LayerError, match="number of labels must match"):
        build('name: "acc" type: "Accuracy"', (2, 3, 4), (2,))
    with pytest.raises(LayerError, match="top_k 4 must be at most the number of classes 3"):
        build('type: "Accuracy" accuracy_param { top_k: 4 }', (2, 3), (2,))
    m = build('name: "acc" type: "Accuracy"', (2, 3), (2,))
    with pytest.raises(LayerError, match=r"layer 'acc' \(Accuracy\): label value 3"):
        m(torch.zeros(2, 3), torch.tensor([0., 3]))
