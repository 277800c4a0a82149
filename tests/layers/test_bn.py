"""BN (PSPNet / SegNet / ENet forks) against numpy transcriptions of the forks' bn_layer.cpp formulas."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
PSP = ('param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 0 } param { lr_mult: 0 } '
       'bn_param { slope_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 0 } '
       'momentum: 0.95 %s }')


def build(fields, shape=(2, 3, 4, 5), phase=TRAIN, dialect=None, tops=1):
    top = " ".join(f'top: "t{i}"' for i in range(tops))
    lp = text_format.Parse(f'name: "bn" type: "BN" bottom: "x" {top} {fields}', caffe_pb2.LayerParameter())
    return LAYERS.get("BN").builder(lp, [shape], BuildContext(phase=phase, dialect=dialect))


def stats(x):
    """Per-channel mean and biased variance over N, H, W (both forks' batch statistics)."""
    mean = x.mean(axis=(0, 2, 3))
    return mean, ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))


def bc(v):
    return np.asarray(v).reshape(1, -1, 1, 1)


def set_blobs(m, *values):
    with torch.no_grad():
        for p, v in zip(m.parameters(), values):
            p.copy_(torch.as_tensor(v, dtype=p.dtype).reshape(p.shape))


rng = np.random.default_rng(0)
X = rng.standard_normal((2, 3, 4, 5)).astype(np.float32) * 2 + 1
SLOPE, BIAS = np.float32([0.5, 2.0, -1.0]), np.float32([0.1, -0.2, 0.3])
MEAN, VAR = np.float32([0.2, -0.1, 0.4]), np.float32([1.5, 0.5, 2.0])


# -- PSPNet ---------------------------------------------------------------------------------------------
def test_pspnet_blobs_and_fillers():
    m = build(PSP % "")
    names = [n for n, _ in m.named_parameters()]
    assert names == ["slope", "bias", "mean", "variance"]
    assert all(p.shape == (1, 3, 1, 1) for p in m.parameters())
    assert torch.all(m.slope == 1) and torch.all(m.bias == 0) and torch.all(m.mean == 0)
    assert torch.all(m.variance == 0)                                   # LayerSetUp: 0 when not frozen
    assert torch.all(build(PSP % "frozen: true").variance == 1)         # ... and 1 when frozen
    assert m.fixed_blobs == (2, 3) and build(PSP % "frozen: true").fixed_blobs == (0, 1, 2, 3)


def test_pspnet_frozen_uses_stored_statistics_in_train_and_does_not_update():
    m = build(PSP % "frozen: true eps: 1e-3")
    set_blobs(m, SLOPE, BIAS, MEAN, VAR)
    x = torch.tensor(X, requires_grad=True)
    y = m(x)
    ref = bc(SLOPE) * (X - bc(MEAN)) / np.sqrt(bc(VAR) + 1e-3) + bc(BIAS)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m.mean.detach().numpy().ravel(), MEAN)
    np.testing.assert_array_equal(m.variance.detach().numpy().ravel(), VAR)
    assert not m.slope.requires_grad and not m.bias.requires_grad       # Backward_cpu: no slope/bias diff
    g = rng.standard_normal(X.shape).astype(np.float32)
    y.backward(torch.tensor(g))
    np.testing.assert_allclose(x.grad.numpy(), g * bc(SLOPE) / np.sqrt(bc(VAR) + 1e-3), rtol=1e-5)


def test_pspnet_train_batch_statistics_and_moving_average():
    m = build(PSP % "")
    set_blobs(m, SLOPE, BIAS, MEAN, VAR)
    y = m(torch.tensor(X)).detach().numpy()
    mean, var = stats(X)
    ref = bc(SLOPE) * (X - bc(mean)) / np.sqrt(bc(var) + 1e-5) + bc(BIAS)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # Forward_cpu: caffe_cpu_axpby(1 - momentum, batch, momentum, blob)
    np.testing.assert_allclose(m.mean.detach().numpy().ravel(), 0.05 * mean + 0.95 * MEAN, rtol=1e-5)
    np.testing.assert_allclose(m.variance.detach().numpy().ravel(), 0.05 * var + 0.95 * VAR, rtol=1e-5)
    assert m.updates_state


def test_pspnet_test_phase_uses_stored_statistics():
    m = build(PSP % "", phase=TEST)
    set_blobs(m, SLOPE, BIAS, MEAN, VAR)
    y = m(torch.tensor(X)).detach().numpy()
    ref = bc(SLOPE) * (X - bc(MEAN)) / np.sqrt(bc(VAR) + 1e-5) + bc(BIAS)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m.mean.detach().numpy().ravel(), MEAN)
    assert not m.updates_state


def test_pspnet_train_backward_is_the_forks_formula():
    """Backward_cpu: dx = inv_std * (d - mean(d) - x_hat * mean(d * x_hat)), d = slope * dy; dslope =
    sum(dy * x_hat); dbias = sum(dy) (sums and means over N, H, W)."""
    m = build(PSP % "")
    set_blobs(m, SLOPE, BIAS, MEAN, VAR)
    x = torch.tensor(X, requires_grad=True)
    g = rng.standard_normal(X.shape).astype(np.float32)
    m(x).backward(torch.tensor(g))
    mean, var = stats(X)
    inv = 1 / np.sqrt(bc(var) + 1e-5)
    xh = (X - bc(mean)) * inv
    d = g * bc(SLOPE)
    dx = inv * (d - bc(d.mean(axis=(0, 2, 3))) - xh * bc((d * xh).mean(axis=(0, 2, 3))))
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.slope.grad.numpy().ravel(), (g * xh).sum(axis=(0, 2, 3)), rtol=1e-4)
    np.testing.assert_allclose(m.bias.grad.numpy().ravel(), g.sum(axis=(0, 2, 3)), rtol=1e-4)


@pytest.mark.parametrize("fields,phase", [("", TRAIN), ("frozen: true", TRAIN), ("", TEST)])
def test_pspnet_gradcheck(fields, phase):
    m = build(PSP % fields, shape=(2, 2, 3, 3), phase=phase).double()
    set_blobs(m, [0.5, 2.0], [0.1, -0.2], [0.2, -0.1], [1.5, 0.5])
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(m, (x,))


# -- SegNet / ENet --------------------------------------------------------------------------------------
def test_segnet_blobs():
    m = build('bn_param { scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0.5 } }')
    assert [n for n, _ in m.named_parameters()] == ["scale", "shift"]
    assert torch.all(m.scale == 1) and torch.all(m.shift == 0.5) and m.scale.shape == (1, 3, 1, 1)


@pytest.mark.parametrize("phase", [TRAIN, TEST])  # LEARN uses batch statistics in every phase
def test_segnet_learn(phase):
    m = build("bn_param { bn_mode: LEARN }", phase=phase, tops=3)
    set_blobs(m, SLOPE, BIAS)
    y, bm, bv = (t.detach().numpy() for t in m(torch.tensor(X)))
    mean = X.mean(axis=(0, 2, 3))
    var = (X * X).mean(axis=(0, 2, 3)) - mean * mean                     # E(X^2) - (EX)^2
    ref = bc(SLOPE) * (X - bc(mean)) / np.sqrt(bc(var) + 1e-9) + bc(BIAS)  # var_eps_ = 1e-9
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bm, bc(mean), rtol=1e-5)
    np.testing.assert_allclose(bv, bc(var), rtol=1e-4)
    assert bm.shape == (1, 3, 1, 1)


def test_segnet_inference():
    m = build("bn_param { bn_mode: INFERENCE }")
    set_blobs(m, SLOPE, BIAS)
    x = torch.tensor(X, requires_grad=True)
    y = m(x)
    np.testing.assert_allclose(y.detach().numpy(), bc(SLOPE) * X + bc(BIAS), rtol=1e-6)
    g = rng.standard_normal(X.shape).astype(np.float32)
    y.backward(torch.tensor(g))
    np.testing.assert_allclose(x.grad.numpy(), g * bc(SLOPE), rtol=1e-6)
    np.testing.assert_allclose(m.scale.grad.numpy().ravel(), (g * X).sum(axis=(0, 2, 3)), rtol=1e-4)
    np.testing.assert_allclose(m.shift.grad.numpy().ravel(), g.sum(axis=(0, 2, 3)), rtol=1e-4)


def test_segnet_learn_backward_is_the_forks_formula():
    m = build("bn_param { bn_mode: LEARN }")
    set_blobs(m, SLOPE, BIAS)
    x = torch.tensor(X, requires_grad=True)
    g = rng.standard_normal(X.shape).astype(np.float32)
    m(x).backward(torch.tensor(g))
    mean, var = stats(X)
    std = np.sqrt(bc(var) + 1e-9)
    xh = (X - bc(mean)) / std
    d = g * bc(SLOPE)
    dx = (d - bc(d.mean(axis=(0, 2, 3))) - xh * bc((d * xh).mean(axis=(0, 2, 3)))) / std
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.scale.grad.numpy().ravel(), (g * xh).sum(axis=(0, 2, 3)), rtol=1e-4)


@pytest.mark.parametrize("mode", ["LEARN", "INFERENCE"])
def test_segnet_gradcheck(mode):
    m = build(f"bn_param {{ bn_mode: {mode} }}", shape=(2, 2, 3, 3)).double()
    set_blobs(m, [0.5, 2.0], [0.1, -0.2])
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(m, (x,))


def test_segnet_statistics_tops_get_no_gradient():
    m = build("bn_param { bn_mode: LEARN }", tops=2)
    x = torch.tensor(X, requires_grad=True)
    y, bm = m(x)
    assert not bm.requires_grad


# -- which fork ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields,dialect,fork", [
    ("bn_param { frozen: true }", None, "PSPNet"),
    ("bn_param { momentum: 0.9 }", "segnet", "PSPNet"),       # fields beat the dialect
    ("bn_param { bn_mode: INFERENCE }", "pspnet", "SegNet"),
    ("", "pspnet", "PSPNet"),
    ("", "enet", "SegNet"),
    ("", "segnet", "SegNet"),
    ("param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 0 } param { lr_mult: 0 }", None, "PSPNet"),
    ("param { lr_mult: 1 } param { lr_mult: 1 }", None, "SegNet"),
])
def test_fork_choice(fields, dialect, fork):
    assert build(fields, dialect=dialect).extra_repr().startswith(fork)


@pytest.mark.parametrize("fields,tops,msg", [
    ("bn_param { frozen: true bn_mode: LEARN }", 1, "mixes"),
    ("", 1, "cannot tell"),
    ("bn_param { frozen: true }", 2, "exactly 1 top"),
    ("bn_param { bn_mode: INFERENCE }", 2, "LEARN only"),
])
def test_errors(fields, tops, msg):
    with pytest.raises(LayerError, match=msg):
        build(fields, tops=tops)


def test_net_dialect_decides_a_bare_bn():
    """A BN layer that sets no bn_param field: the dialect given to Net, else the one the net's layers show."""
    import netspec
    from netspec.net.pycaffe import Net
    bare = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }\n'
            'layer { name: "bn" type: "BN" bottom: "x" top: "y" }\n')
    param = text_format.Parse(bare, caffe_pb2.NetParameter())
    assert len(Net(param, netspec.TEST, dialect="pspnet").params["bn"]) == 4
    assert len(Net(param, netspec.TEST, dialect="segnet").params["bn"]) == 2
    with pytest.raises(LayerError, match="cannot tell"):
        Net(param, netspec.TEST)
    unpool = ('layer { name: "p" type: "Pooling" bottom: "y" top: "p" top: "m" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
              'layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u" upsample_param { scale: 2 } }\n')
    seg = text_format.Parse(bare + unpool, caffe_pb2.NetParameter())  # Upsample: a SegNet net
    assert len(Net(seg, netspec.TEST).params["bn"]) == 2


@pytest.mark.slow  # about 3 s (the exporter)
def test_onnx_export_of_both_forms(tmp_path):
    """TEST-phase BN (PSPNet frozen, SegNet INFERENCE) is plain arithmetic: exports, onnxruntime agrees."""
    pytest.importorskip("onnxruntime")
    from netspec.interop import export
    text = ('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
            'layer { name: "bn" type: "BN" bottom: "data" top: "a" bn_param { frozen: true eps: 0.01 '
            'slope_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }\n'
            'layer { name: "bn2" type: "BN" bottom: "a" top: "b" bn_param { bn_mode: INFERENCE '
            'scale_filler { type: "gaussian" } shift_filler { type: "gaussian" } } }\n')
    (tmp_path / "n.prototxt").write_text(text)
    report = export.export(str(tmp_path / "n.prototxt"), onnx_path=str(tmp_path / "n.onnx"))
    assert report.checks and all(err < 1e-5 for *_, err in report.checks)


@pytest.mark.parametrize("fork", ["pspnet", "segnet"])
def test_opencv_second_opinion_through_bvlc_layers(fork, tmp_path):
    """OpenCV has no BN layer; its BatchNorm (global statistics) + Scale (bias) compute the same affine map from
    the same numbers: PSPNet's frozen BN = BatchNorm(mean, variance, eps) + Scale(slope, bias); SegNet's
    INFERENCE BN = Scale(scale, shift). netspec writes the BVLC net's caffemodel from the BN blobs."""
    cv2 = pytest.importorskip("cv2")
    import netspec
    from netspec.net.pycaffe import Net
    head = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 6 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 '
            'kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }\n')
    bn = ('layer { name: "bn" type: "BN" bottom: "c" top: "y" bn_param { frozen: true eps: 0.001 } }\n'
          if fork == "pspnet" else 'layer { name: "bn" type: "BN" bottom: "c" top: "y" bn_param { bn_mode: INFERENCE } }\n')
    bvlc = ('layer { name: "bnb" type: "BatchNorm" bottom: "c" top: "b" batch_norm_param { use_global_stats: true '
            'eps: 0.001 } }\nlayer { name: "sc" type: "Scale" bottom: "b" top: "y" scale_param { bias_term: true } }\n'
            if fork == "pspnet" else
            'layer { name: "sc" type: "Scale" bottom: "c" top: "y" scale_param { bias_term: true } }\n')
    torch.manual_seed(0)
    ours = Net(text_format.Parse(head + bn, caffe_pb2.NetParameter()), netspec.TEST)
    rng = np.random.default_rng(0)
    blobs = ours.params["bn"]
    for b in blobs:
        b.data[...] = rng.uniform(0.5, 2.0, b.shape) * rng.choice([-1, 1], b.shape)
    if fork == "pspnet":
        blobs[3].data[...] = np.abs(blobs[3].data)  # a variance
    (tmp_path / "bvlc.prototxt").write_text(head + bvlc)
    theirs = Net(str(tmp_path / "bvlc.prototxt"), netspec.TEST)
    theirs.params["c"][0].data[...] = ours.params["c"][0].data
    theirs.params["c"][1].data[...] = ours.params["c"][1].data
    if fork == "pspnet":
        theirs.params["bnb"][0].data[...] = blobs[2].data.ravel()
        theirs.params["bnb"][1].data[...] = blobs[3].data.ravel()
        theirs.params["bnb"][2].data[...] = 1
    theirs.params["sc"][0].data[...] = blobs[0].data.ravel()
    theirs.params["sc"][1].data[...] = blobs[1].data.ravel()
    theirs.save(str(tmp_path / "bvlc.caffemodel"))
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    want = ours.forward(x=x)["y"]
    cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "bvlc.prototxt"), str(tmp_path / "bvlc.caffemodel"))
    cv.setInput(x)
    got = cv.forward()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("fields,phase,affine", [
    (PSP % "frozen: true eps: 0.01", TRAIN, True), (PSP % "", TEST, True), (PSP % "", TRAIN, False),
    ("bn_param { bn_mode: INFERENCE }", TRAIN, True), ("bn_param { bn_mode: LEARN }", TEST, False),
])
def test_affine_form_for_folding(fields, phase, affine):
    """``affine()``: (k, b) with y = k x + b per channel wherever no batch statistics are used, else None."""
    m = build(fields, phase=phase)
    set_blobs(m, SLOPE, BIAS, MEAN, VAR)
    ab = m.affine()
    assert (ab is not None) == affine
    if affine:
        k, b = (t.detach().numpy() for t in ab)
        np.testing.assert_allclose(m(torch.tensor(X)).detach().numpy(), bc(k) * X + bc(b), rtol=1e-5, atol=1e-5)
