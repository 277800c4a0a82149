"""SegAccuracy (DeepLab): scores from a confusion matrix counted by hand from DeepLab's definitions."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS


def build(param, x_shape, l_shape):
    lp = text_format.Parse(f'name: "a" type: "SegAccuracy" bottom: "x" bottom: "l" top: "y" '
                           f'seg_accuracy_param {{ {param} }}', caffe_pb2.LayerParameter())
    return LAYERS.get(lp.type).builder(lp, [x_shape, l_shape], BuildContext(phase=caffe_pb2.TEST))


def scores(pred, C):
    """One-hot scores (N, C, H, W) whose arg-max is ``pred`` (N, H, W)."""
    pred = np.asarray(pred)
    x = np.zeros((pred.shape[0], C) + pred.shape[1:], np.float32)
    for c in range(C):
        x[:, c] = pred == c
    return torch.from_numpy(x)


def test_three_scores_by_hand():
    # 3 classes, 8 pixels (one ignored). Pairs (actual, predicted):
    # (0,0) (0,0) (0,1) (1,1) (1,2) (2,2) (2,2) and (255, 1) ignored.
    lab = np.array([[[0, 0, 0, 1], [1, 2, 2, 255]]], np.float32)
    pred = np.array([[[0, 0, 1, 1], [2, 2, 2, 1]]])
    m = build("ignore_label: 255", (1, 3, 2, 4), (1, 1, 2, 4))
    y = m(scores(pred, 3), torch.from_numpy(lab[:, None]))
    assert y.shape == (1, 1, 1, 3)
    # M = [[2,1,0],[0,1,1],[0,0,2]]: accuracy 5/7; recall (2/3 + 1/2 + 1)/3;
    # IU: class 0: 2/(3+2-2)=2/3, class 1: 1/(2+2-1)=1/3, class 2: 2/(2+3-2)=2/3
    want = [5 / 7, (2 / 3 + 1 / 2 + 1) / 3, (2 / 3 + 1 / 3 + 2 / 3) / 3]
    np.testing.assert_allclose(y.reshape(-1).numpy(), want, rtol=1e-6)


def test_absent_classes_recall_skips_them_iou_counts_them_as_one():
    lab = np.zeros((1, 1, 1, 3), np.float32)  # only class 0, predicted 0, 0, 1
    m = build("", (1, 4, 1, 3), (1, 1, 1, 3))
    y = m(scores([[[0, 0, 1]]], 4), torch.from_numpy(lab)).reshape(-1).numpy()
    # recall over present classes only: 2/3. IU: c0 2/3, c1 0/1 = 0, c2 and c3 empty unions count 1
    np.testing.assert_allclose(y, [2 / 3, 2 / 3, (2 / 3 + 0 + 1 + 1) / 4], rtol=1e-6)


def test_ties_go_to_the_higher_class():
    x = torch.zeros(1, 3, 1, 1)  # all scores equal: DeepLab's std::greater sort picks class 2
    m = build("", (1, 3, 1, 1), (1, 1, 1, 1))
    assert m(x, torch.full((1, 1, 1, 1), 2.0))[0, 0, 0, 0] == 1
    assert m(x, torch.full((1, 1, 1, 1), 0.0))[0, 0, 0, 0] == 0


def test_reset_false_accumulates_over_forwards():
    m = build("reset: false", (1, 2, 1, 2), (1, 1, 1, 2))
    m(scores([[[0, 1]]], 2), torch.tensor([[[[0.0, 0.0]]]]))  # 1 right of 2
    y = m(scores([[[1, 1]]], 2), torch.tensor([[[[1.0, 1.0]]]]))  # 2 right of 2
    assert y[0, 0, 0, 0].item() == pytest.approx(3 / 4)
    fresh = build("", (1, 2, 1, 2), (1, 1, 1, 2))
    fresh(scores([[[0, 1]]], 2), torch.tensor([[[[0.0, 0.0]]]]))
    assert fresh(scores([[[1, 1]]], 2), torch.tensor([[[[1.0, 1.0]]]]))[0, 0, 0, 0].item() == 1


def test_empty_matrix_scores_zero_accuracy():
    m = build("ignore_label: 255", (1, 2, 1, 1), (1, 1, 1, 1))
    y = m(torch.zeros(1, 2, 1, 1), torch.full((1, 1, 1, 1), 255.0)).reshape(-1)
    assert y[0] == 0 and y[1] == 0 and y[2] == 1  # every union empty: IU 1, as DeepLab's avgJaccard


def test_unexpected_label_is_an_error():
    m = build("ignore_label: 255", (1, 2, 1, 2), (1, 1, 1, 2))
    with pytest.raises(LayerError, match="unexpected label 7 at num 0 row 0 col 1"):
        m(torch.zeros(1, 2, 1, 2), torch.tensor([[[[0.0, 7.0]]]]))


@pytest.mark.parametrize("x,l,msg", [
    ((1, 2, 3, 3), (1, 2, 3, 3), r"must be \(N, 1, H, W\)"),
    ((1, 2, 3, 3), (1, 1, 3, 4), r"must be \(N, 1, H, W\)"),
    ((2, 3), (2, 1), "4 axes"),
])
def test_bad_shapes(x, l, msg):
    with pytest.raises(LayerError, match=msg):
        build("", x, l)
