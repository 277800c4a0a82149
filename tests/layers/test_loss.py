"""Loss layers against hand-computed float64 closed forms (values and gradients) and errors."""
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
    if not lp.top:
        lp.top.append("loss")
    return LAYERS.get(lp.type).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=caffe_pb2.TRAIN))


def _rel_err(ours, ref):
    return np.linalg.norm(np.asarray(ours, np.float64).reshape(ref.shape) - ref) / np.linalg.norm(ref)


def test_golden_infogain(shared_dir):
    """infogain_H_bottom, except diff/x: Caffe's ScaleLayer leaves top_diff * x (scratch) in the diff of a
    bottom that needs no gradient; that is not a gradient, so it is not compared."""
    from netspec.net.pycaffe import Net
    case = shared_dir / "golden" / "layers" / "infogain_H_bottom"
    net = Net(str(case / "net.prototxt"), str(case / "weights.caffemodel"), caffe_pb2.TEST)
    inputs = np.load(case / "inputs.npz")
    for k in inputs.files:
        net.blobs[k].data[...] = inputs[k]
    net.forward()
    fwd, bwd = np.load(case / "forward.npz"), np.load(case / "backward.npz")
    assert _rel_err(net.blobs["loss"].data, fwd["loss"]) < 1e-5
    net.clear_param_diffs()
    net.backward()
    assert _rel_err(net.blobs["s"].diff, bwd["diff/s"]) < 1e-4
    assert _rel_err(net.params["pre"][0].diff, bwd["param/pre/0"]) < 1e-4


# -- SoftmaxWithLoss ----------------------------------------------------------------------------------------

def _swl_reference(x, label, ignore, mode, cw=None):
    """float64 loss and d loss / d x for N x C x H x W scores."""
    x = x.astype(np.float64)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    N, C = x.shape[:2]
    lab = label.reshape(N, *x.shape[2:]).astype(np.int64)
    valid = lab != ignore if ignore is not None else np.ones(lab.shape, bool)
    safe = np.where(valid, lab, 0)
    w = valid * (np.asarray(cw, np.float64)[safe] if cw is not None else 1.0)
    p_true = np.take_along_axis(p, safe[:, None], 1)[:, 0]
    total = (-np.log(np.maximum(p_true, np.finfo(np.float32).tiny)) * w).sum()
    n = {"FULL": lab.size, "VALID": w.sum(), "BATCH_SIZE": N, "NONE": 1}[mode]
    n = n if n > 0 else 1
    onehot = np.eye(C)[safe].transpose(0, -1, *range(1, lab.ndim))
    grad = (p - onehot) * w[:, None] / n
    return total / n, grad


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
@pytest.mark.parametrize("cw", [None, [0.5, 2.0, 1.0, 3.0]])
def test_softmax_with_loss_normalizations(mode, cw):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    label = rng.integers(0, 4, size=(2, 1, 3, 5)).astype(np.float32)
    label[0, 0, 0, :3] = 255
    extra = "".join(f" class_weight: {w}" for w in cw or [])
    m = build(f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: 255 normalization: {mode}{extra} }}',
              x.shape, label.shape)
    xt = torch.tensor(x, requires_grad=True)
    loss = m(xt, torch.tensor(label))
    loss.backward()
    ref, grad = _swl_reference(x, label, 255, mode, cw)
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_losses_compute_in_float32_under_autocast(dtype):
    # a 64x64 score map with large scores, as an untrained net gives: in float16 the pixel sum overflows
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(1, 5, 64, 64)) * 40).astype(np.float32)
    label = rng.integers(0, 5, size=(1, 1, 64, 64)).astype(np.float32)
    xh = torch.tensor(x).to(dtype)
    ref, grad = _swl_reference(xh.float().numpy(), label, None, "FULL", None)  # exact maths on the rounded scores
    m = build('type: "SoftmaxWithLoss" loss_param { normalization: FULL }', x.shape, label.shape)
    xt = xh.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        loss = m(xt, torch.tensor(label))
        eu = build('type: "EuclideanLoss"', x.shape, x.shape)(xh, torch.zeros_like(xh))
    loss.backward()
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(ref, rel=1e-5)
    assert xt.grad.dtype == dtype
    np.testing.assert_allclose(xt.grad.float().numpy(), grad, rtol=1e-2, atol=1e-7)  # rounded to dtype
    # Euclidean: sum of squares / 2N with N = 1, about 4e6 here: past float16's 65504
    assert eu.dtype == torch.float32 and eu.item() == pytest.approx(float((xh.double() ** 2).sum() / 2), rel=1e-5)


def test_softmax_with_loss_legacy_normalize_and_defaults():
    x = torch.randn(2, 3, 4)
    label = torch.tensor([[0., 1, 255, 2], [255, 255, 1, 0]])
    lp = 'type: "SoftmaxWithLoss" loss_param {{ ignore_label: 255 {} }}'
    total = build(lp.format("normalization: NONE"), x.shape, label.shape)(x, label)
    assert build(lp.format("normalize: false"), x.shape, label.shape)(x, label) == pytest.approx(total / 2)
    assert build(lp.format("normalize: true"), x.shape, label.shape)(x, label) == pytest.approx(total / 5)
    assert build(lp.format(""), x.shape, label.shape)(x, label) == pytest.approx(total / 5)  # VALID default
    # normalization wins over the legacy field when both are set
    assert build(lp.format("normalize: true normalization: BATCH_SIZE"), x.shape, label.shape)(x, label) == \
        pytest.approx(total / 2)


def test_softmax_with_loss_flt_min_cap_and_gradient():
    x = torch.tensor([[200.0, 0.0]], requires_grad=True)  # p(class 1) = e^-200 underflows
    loss = build('type: "SoftmaxWithLoss"', (1, 2), (1,))(x, torch.tensor([1.0]))
    assert loss.item() == pytest.approx(-np.log(np.finfo(np.float32).tiny), rel=1e-6)  # 87.3365
    loss.backward()
    assert x.grad.tolist() == [[1.0, -1.0]]  # p - onehot, unaffected by the cap


def test_softmax_with_loss_all_ignored_and_axis():
    x = torch.randn(2, 3, requires_grad=True)
    loss = build('type: "SoftmaxWithLoss" loss_param { ignore_label: 7 }', (2, 3), (2,))(x, torch.tensor([7., 7.]))
    loss.backward()
    assert loss.item() == 0.0 and not x.grad.any()
    x = torch.randn(3, 2, 4)  # classes on the last axis
    label = torch.tensor([[0., 3], [1, 2], [3, 3]])
    loss = build('type: "SoftmaxWithLoss" softmax_param { axis: -1 } loss_param { normalization: NONE }',
                 x.shape, label.shape)(x, label)
    ref = -torch.log_softmax(x, -1).gather(-1, label.long()[..., None]).sum()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_softmax_with_loss_prob_top():
    x = torch.randn(2, 3, requires_grad=True)
    m = build('type: "SoftmaxWithLoss" top: "loss" top: "prob"', (2, 3), (2,))
    assert m.top_shapes([(2, 3), (2,)]) == [(), (2, 3)]
    loss, prob = m(x, torch.tensor([0., 2]))
    assert torch.allclose(prob, torch.softmax(x, 1)) and not prob.requires_grad


def test_softmax_with_loss_errors():
    m = build('name: "loss" type: "SoftmaxWithLoss" loss_param { ignore_label: 255 }', (2, 3), (2,))
    with pytest.raises(LayerError, match=r"layer 'loss' \(SoftmaxWithLoss\): label value 3 is outside \[0, 3\)"):
        m(torch.randn(2, 3), torch.tensor([3., 255]))
    with pytest.raises(LayerError, match="label value -1"):
        m(torch.randn(2, 3), torch.tensor([-1., 0]))
    with pytest.raises(LayerError, match="number of labels must match"):
        build('name: "loss" type: "SoftmaxWithLoss"', (2, 3, 4), (2, 3))
    with pytest.raises(LayerError, match="class_weight has 2 values for 3 classes"):
        build('type: "SoftmaxWithLoss" loss_param { class_weight: 1 class_weight: 2 }', (2, 3), (2,))


def test_softmax_with_loss_prob_top_needs_loss_weights_in_a_net():
    from netspec.net.pycaffe import Net
    text = """
        layer { name: "input" type: "Input" top: "x" top: "label"
                input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" %s }
    """
    with pytest.raises(LayerError, match="loss_weight must be unspecified or given once per top"):
        Net(text_format.Parse(text % "", caffe_pb2.NetParameter()), caffe_pb2.TEST)
    net = Net(text_format.Parse(text % "loss_weight: 1 loss_weight: 0", caffe_pb2.NetParameter()), caffe_pb2.TEST)
    net.blobs["x"].data[...] = np.log([[1, 1, 2], [1, 2, 1]])
    net.blobs["label"].data[...] = [2, 0]
    out = net.forward()
    assert out["loss"] == pytest.approx(-(np.log(0.5) + np.log(0.25)) / 2, rel=1e-6)
    np.testing.assert_allclose(out["prob"], [[0.25, 0.25, 0.5], [0.25, 0.5, 0.25]], rtol=1e-6)


# -- the other losses ---------------------------------------------------------------------------------------

def test_euclidean():
    a, b = torch.randn(3, 2, 2, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    loss = build('type: "EuclideanLoss"', a.shape, b.shape)(a, b)
    d = a.detach().reshape(3, 4) - b.detach()
    assert loss.item() == pytest.approx((d ** 2).sum().item() / 6, rel=1e-6)
    loss.backward()
    assert torch.allclose(b.grad, -d / 3)
    with pytest.raises(LayerError, match="same dimension"):
        build('type: "EuclideanLoss"', (3, 4), (3, 5))


def test_sigmoid_cross_entropy():
    x = torch.tensor([[0.0, 2.0, -3.0], [100.0, -100.0, 1.0]], requires_grad=True)
    t = torch.tensor([[0.3, 1.0, -1.0], [0.0, 1.0, -1.0]])
    xd, td = x.detach().double(), t.double()
    per = torch.clamp(xd, min=0) - xd * td + torch.log1p(torch.exp(-xd.abs()))
    loss = build('type: "SigmoidCrossEntropyLoss"', x.shape, t.shape)(x, t)  # default BATCH_SIZE, no ignore
    assert loss.item() == pytest.approx(per.sum().item() / 2, rel=1e-6)
    loss.backward()
    assert torch.allclose(x.grad.double(), (torch.sigmoid(xd) - td) / 2, atol=1e-7)
    x.grad = None
    loss = build('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 normalization: VALID }',
                 x.shape, t.shape)(x, t)
    valid = td != -1
    assert loss.item() == pytest.approx(per[valid].sum().item() / 4, rel=1e-6)
    loss.backward()
    assert x.grad[0, 2] == 0 and x.grad[1, 2] == 0
    assert x.grad[0, 0].item() == pytest.approx((0.5 - 0.3) / 4, rel=1e-6)  # sigmoid(0) - t, exact at 0


def _write_blob(path, values):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 1, *np.shape(values)])
    blob.data.extend(np.asarray(values, np.float32).ravel().tolist())
    path.write_bytes(blob.SerializeToString())


def test_infogain_from_source_and_bottom(tmp_path):
    rng = np.random.default_rng(1)
    H = rng.uniform(0, 1, size=(3, 3)).astype(np.float32)
    _write_blob(tmp_path / "H.binaryproto", H)
    x = torch.tensor(rng.normal(size=(4, 3)).astype(np.float32), requires_grad=True)
    label = torch.tensor([0., 2, 1, 2])
    m = build(f'type: "InfogainLoss" infogain_loss_param {{ source: "{tmp_path / "H.binaryproto"}" }}',
              x.shape, label.shape)
    loss = m(x, label)
    p = torch.softmax(x.detach().double(), 1)
    Hy = torch.tensor(H, dtype=torch.float64)[label.long()]
    assert loss.item() == pytest.approx(-(Hy * p.log()).sum().item() / 4, rel=1e-6)
    loss.backward()
    assert torch.allclose(x.grad.double(), (p * Hy.sum(1, keepdim=True) - Hy) / 4, atol=1e-6)
    m3 = build('type: "InfogainLoss"', x.shape, label.shape, (1, 1, 3, 3))
    assert m3(x, label, torch.tensor(H)).item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(LayerError, match="has 4 values, need 3 x 3"):
        build('type: "InfogainLoss"', x.shape, label.shape, (2, 2))


def test_hinge_l1_l2():
    x = torch.tensor([[0.5, -2.0, 0.0], [1.5, 0.2, -0.9]], requires_grad=True)
    label = torch.tensor([0., 2])
    s = torch.tensor([[-1.0, 1, 1], [1, 1, -1]])
    m = torch.relu(1 + x.detach() * s)
    loss = build('type: "HingeLoss"', x.shape, label.shape)(x, label)
    assert loss.item() == pytest.approx(m.sum().item() / 2, rel=1e-6)
    loss.backward()
    assert torch.equal(x.grad, s * (m > 0) / 2)
    x.grad = None
    loss = build('type: "HingeLoss" hinge_loss_param { norm: L2 }', x.shape, label.shape)(x, label)
    assert loss.item() == pytest.approx((m ** 2).sum().item() / 2, rel=1e-6)
    loss.backward()
    assert torch.allclose(x.grad, s * m)


def test_multinomial_logistic_clamp_gradient():
    p = torch.tensor([[0.2, 0.8], [0.0, 1.0]], requires_grad=True)
    loss = build('type: "MultinomialLogisticLoss"', p.shape, (2,))(p, torch.tensor([1., 0]))
    assert loss.item() == pytest.approx(-(np.log(0.8) + np.log(np.float32(1e-20))) / 2, rel=1e-6)
    loss.backward()
    assert p.grad[0, 1].item() == pytest.approx(-1 / 0.8 / 2, rel=1e-6)
    assert p.grad[1, 0].item() == pytest.approx(-1 / np.float32(1e-20) / 2, rel=1e-6)  # Caffe's -1/max(p, 1e-20)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive(legacy):
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.3, 0.4]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.0]], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0])
    margin = 2.0
    loss = build(f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: {margin} '
                 f'legacy_version: {str(legacy).lower()} }}', a.shape, b.shape, (3,))(a, b, y)
    d2 = np.array([1.0, 0.25, 0.25])
    if legacy:
        dis = np.maximum(margin - d2, 0)
    else:
        dis = np.maximum(margin - np.sqrt(d2), 0) ** 2
    assert loss.item() == pytest.approx((d2[0] + dis[1] + dis[2]) / 6, rel=1e-6)
    loss.backward()
    diff = (a - b).detach().numpy()
    np.testing.assert_allclose(a.grad[0].numpy(), diff[0] / 3, rtol=1e-6)
    for j in (1, 2):
        if legacy:
            want = -diff[j] / 3
        else:
            dist = np.sqrt(d2[j])
            want = -(margin - dist) / (dist + 1e-4) * diff[j] / 3  # Caffe's (d + 1e-4) denominator
        np.testing.assert_allclose(a.grad[j].numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(b.grad.numpy(), -a.grad.numpy(), rtol=1e-6)


def test_a_nan_label_is_named_as_nan_not_as_a_huge_integer():
    import torch
    from netspec.errors import LayerError
    from netspec.layers.loss import _labels
    x = torch.zeros(2, 3)
    with pytest.raises(LayerError, match=r"label value nan is not a number; .* 1 such labels"):
        _labels("loss", x, torch.tensor([0.0, float("nan")]), 1, None, 3)
