"""Accuracy's per-class top in SegNet's dialect (caffe-segnet src/caffe/layers/accuracy_layer.cpp): shape
C x 1 x 1 x 1, and a class that no position is labelled with scores 1 (BVLC: shape C, score 0)."""
import numpy as np
import torch
from google.protobuf import text_format

from netspec.net.caffe_net import BuildContext
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS


def test_per_class_accuracy_segnet_and_bvlc():
    lp = text_format.Parse('name: "a" type: "Accuracy" bottom: "x" bottom: "l" top: "acc" top: "per"',
                           caffe_pb2.LayerParameter())
    x = torch.tensor([[[[2.0, 0.0]]], [[[1.0, 3.0]]], [[[0.0, 0.0]]]]).permute(1, 0, 2, 3)  # 1 x 3 x 1 x 2
    label = torch.tensor([[[[0.0, 0.0]]]])  # both positions class 0: class 1 and 2 never labelled
    out = {}
    for dialect in (None, "segnet"):
        m = LAYERS.get("Accuracy").builder(lp, [(1, 3, 1, 2), (1, 1, 1, 2)],
                                           BuildContext(phase=caffe_pb2.TEST, dialect=dialect))
        acc, per = m(x, label)
        assert acc.item() == 0.5 and list(per.shape) == list(m.top_shapes([(1, 3, 1, 2)])[1])
        out[dialect] = per.reshape(-1).numpy()
    np.testing.assert_array_equal(out[None], [0.5, 0, 0])
    np.testing.assert_array_equal(out["segnet"], [0.5, 1, 1])
