"""Shape layers: Input, Split, Concat, Slice, Crop, Flatten, Reshape, Tile, Silence, Parameter, Filter,
BatchReindex against numpy, and their error messages."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS


def build(text, *shapes):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    if not lp.bottom:
        lp.bottom.extend(f"b{i}" for i in range(len(shapes)))
    return LAYERS.get(lp.type).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=caffe_pb2.TEST))


def leaf(*shape):
    return torch.randn(*shape, requires_grad=True)


def test_input_shapes():
    m = build('type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } }')
    assert m.is_input and m.top_shapes([]) == [(2, 3), (2, 3)]
    m = build('type: "Input" top: "a" top: "b" input_param { shape { dim: 2 } shape { dim: 4 dim: 1 } }')
    assert m.top_shapes([]) == [(2,), (4, 1)]
    with pytest.raises(LayerError, match="once per top blob"):
        build('name: "in" type: "Input" top: "a" top: "b" top: "c" '
              'input_param { shape { dim: 2 } shape { dim: 4 } }')


def test_split_tops_are_distinct_and_grads_sum():
    x = leaf(2, 3)
    a, b, c = build('type: "Split" bottom: "x" top: "a" top: "b" top: "c"', (2, 3))(x)
    assert a is not b and torch.equal(a, x)
    (a * 1 + b * 2 + c * 3).sum().backward()
    assert torch.allclose(x.grad, torch.full((2, 3), 6.0))


def test_concat_axes_and_errors():
    a, b = leaf(2, 1, 3), leaf(2, 4, 3)
    y = build('type: "Concat"', (2, 1, 3), (2, 4, 3))(a, b)
    assert torch.equal(y, torch.cat([a, b], 1))
    y = build('type: "Concat" concat_param { concat_dim: 0 }', (2, 3), (5, 3))(leaf(2, 3), leaf(5, 3))
    assert y.shape == (7, 3)
    y = build('type: "Concat" concat_param { axis: -1 }', (2, 3), (2, 1))(leaf(2, 3), leaf(2, 1))
    assert y.shape == (2, 4)
    with pytest.raises(LayerError, match=r"'b' is \(3, 4, 3\)"):
        build('name: "cat" type: "Concat" bottom: "a" bottom: "b"', (2, 1, 3), (3, 4, 3))
    with pytest.raises(LayerError, match="not both"):
        build('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', (2, 3), (2, 3))


def test_slice_points_equal_and_errors():
    x = leaf(2, 6, 3)
    a, b, c = build('type: "Slice" top: "a" top: "b" top: "c" slice_param { slice_point: 1 slice_point: 4 }',
                    (2, 6, 3))(x)
    assert [t.shape[1] for t in (a, b, c)] == [1, 3, 2] and torch.equal(b, x[:, 1:4])
    (a.sum() + 2 * b.sum() + 3 * c.sum()).backward()
    assert torch.equal(x.grad[0, :, 0], torch.tensor([1., 2, 2, 2, 3, 3]))
    tops = build('type: "Slice" top: "a" top: "b" top: "c" slice_param { slice_dim: 2 }', (2, 6, 3))(x)
    assert all(t.shape == (2, 6, 1) for t in tops)
    tops = build('type: "Slice" top: "a" top: "b"', (2, 6, 3))(leaf(4, 10, 3))  # equal split at run time
    assert [t.shape[1] for t in tops] == [5, 5]
    with pytest.raises(LayerError, match="evenly divide"):
        build('type: "Slice" top: "a" top: "b" top: "c" top: "d"', (2, 6, 3))
    with pytest.raises(LayerError, match="slice_point"):
        build('type: "Slice" top: "a" top: "b" slice_param { slice_point: 1 slice_point: 2 }', (2, 6, 3))
    with pytest.raises(LayerError, match="increase strictly"):
        build('type: "Slice" top: "a" top: "b" top: "c" slice_param { slice_point: 4 slice_point: 2 }',
              (2, 6, 3))


def test_crop_window_grad_and_reference():
    a, ref = leaf(2, 5, 7, 8), torch.randn(1, 3, 4, 5, requires_grad=True)
    m = build('type: "Crop" crop_param { axis: 1 offset: 1 offset: 2 offset: 3 }', (2, 5, 7, 8), (1, 3, 4, 5))
    y = m(a, ref)
    assert torch.equal(y, a[:, 1:4, 2:6, 3:8])
    y.sum().backward()
    assert a.grad.sum() == y.numel() and a.grad[:, 0].abs().sum() == 0 and ref.grad is None
    m = build('type: "Crop" crop_param { offset: 2 }', (2, 3, 9, 10), (1, 1, 5, 6))
    assert torch.equal(m(a.detach()[:, :3, :7], torch.zeros(1, 1, 4, 4)), a.detach()[:, :3, 2:6, 2:6])


def test_crop_errors():
    with pytest.raises(LayerError) as e:
        build('name: "crop" type: "Crop" bottom: "a" bottom: "ref" crop_param { offset: 3 }',
              (1, 2, 10, 10), (1, 1, 8, 8))
    msg = str(e.value)
    assert "layer 'crop' (Crop)" in msg and "offset 3" in msg and "(1, 2, 10, 10)" in msg and "(1, 1, 8, 8)" in msg
    with pytest.raises(LayerError, match="2 offsets given for 3 cropped axes"):
        build('type: "Crop" crop_param { axis: 1 offset: 1 offset: 2 }', (2, 5, 7, 8), (1, 3, 4, 5))
    m = build('name: "crop" type: "Crop" crop_param { offset: 1 }', (1, 1, 10, 10), (1, 1, 8, 8))
    with pytest.raises(LayerError, match="out of bounds"):
        m(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))  # run-time sizes are checked too


def test_flatten():
    x = torch.randn(2, 3, 4, 5)
    assert build('type: "Flatten"', x.shape)(x).shape == (2, 60)
    assert build('type: "Flatten" flatten_param { axis: 2 }', x.shape)(x).shape == (2, 3, 20)
    assert build('type: "Flatten" flatten_param { axis: 0 end_axis: 1 }', x.shape)(x).shape == (6, 4, 5)


def test_reshape():
    x = torch.randn(2, 3, 4, 5)
    assert build('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 5 } }', x.shape)(x).shape == (2, 12, 5)
    m = build('type: "Reshape" reshape_param { shape { dim: 2 dim: 2 } axis: 2 num_axes: 1 }', x.shape)
    assert m(x).shape == (2, 3, 2, 2, 5)
    m = build('type: "Reshape" reshape_param { shape { dim: 1 } axis: -1 num_axes: 0 }', x.shape)
    assert m(x).shape == (2, 3, 4, 5, 1)
    m = build('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', x.shape)
    assert m(torch.randn(7, 2, 2)).shape == (7, 4)  # any input size at run time
    with pytest.raises(LayerError, match="divisible"):
        build('type: "Reshape" reshape_param { shape { dim: 7 dim: -1 } }', x.shape)
    with pytest.raises(LayerError, match="several -1"):
        build('type: "Reshape" reshape_param { shape { dim: -1 dim: -1 } }', x.shape)
    with pytest.raises(LayerError, match="must match"):
        build('type: "Reshape" reshape_param { shape { dim: 7 } }', x.shape)


def test_tile():
    x = torch.randn(2, 2, 3)
    y = build('type: "Tile" tile_param { axis: 1 tiles: 3 }', x.shape)(x)
    assert np.array_equal(y.numpy(), np.tile(x.numpy(), (1, 3, 1)))
    with pytest.raises(LayerError, match="tiles"):
        build('type: "Tile"', x.shape)


def test_silence_parameter_in_a_net():
    from netspec.net.pycaffe import Net
    net = text_format.Parse("""
        layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 3 } } }
        layer { name: "s" type: "Silence" bottom: "a" }
        layer { name: "l" type: "EuclideanLoss" bottom: "w" bottom: "a" top: "loss" }
    """, caffe_pb2.NetParameter())
    n = Net(net, caffe_pb2.TRAIN)
    assert n.params["p"][0].data.shape == (2, 3) and not n.params["p"][0].data.any()  # Caffe starts at 0
    n.blobs["a"].data[...] = 1
    out = n.forward()
    assert out["loss"] == pytest.approx(1.5)
    n.backward()
    assert np.allclose(n.params["p"][0].diff, -0.5)


def test_filter():
    x, y = leaf(4, 2), leaf(4, 3, 1)
    sel = torch.tensor([[1.], [0.], [2.], [0.]])
    m = build('type: "Filter" bottom: "x" bottom: "y" bottom: "s" top: "a" top: "b"', (4, 2), (4, 3, 1), (4, 1))
    assert m.top_shapes([(4, 2), (4, 3, 1), (4, 1)]) == [(4, 2), (4, 3, 1)]
    a, b = m(x, y, sel)
    assert torch.equal(a, x[[0, 2]]) and b.shape == (2, 3, 1)
    a.sum().backward()
    assert torch.equal(x.grad[:, 0], torch.tensor([1., 0, 1, 0]))
    with pytest.raises(LayerError, match="one top per filtered bottom"):
        build('type: "Filter" bottom: "x" bottom: "y" bottom: "s" top: "a"', (4, 2), (4, 3), (4, 1))


def test_batch_reindex():
    x = leaf(3, 2)
    m = build('name: "r" type: "BatchReindex"', (3, 2), (4,))
    y = m(x, torch.tensor([2., 0, 2, 1]))
    assert torch.equal(y, x[[2, 0, 2, 1]])
    y.sum().backward()
    assert torch.equal(x.grad[:, 0], torch.tensor([1., 1, 2]))
    with pytest.raises(LayerError, match=r"layer 'r'.*\[0, 3\).*max 3"):
        m(x, torch.tensor([3.]))
