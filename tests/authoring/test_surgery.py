"""Net surgery: transplant (InnerProduct -> convolution, dilated fc6), interp, zero_layers."""
import numpy as np
import pytest

import netspec
from netspec.formats import binary
from netspec.authoring import surgery
from netspec.authoring.dsl import NetSpec, layers as L, params as P
from netspec.errors import WeightsError
from netspec.layers.fillers import _bilinear
from netspec.proto import caffe_pb2

CONV = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]


def tiny_fcn(fc6_kernel=5, fc6_dilation=1, classes=3):
    """A miniature FCN: conv1, pool1, fc6 (a convolution over the whole pool1), fc7, score_fr,
    upscore (frozen full deconvolution). Default fillers: everything starts at zero."""
    n = NetSpec()
    n.data = L.Input(name="input", shape=dict(dim=[1, 3, 10, 10]))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1, param=CONV)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    extra = dict(dilation=fc6_dilation) if fc6_dilation > 1 else {}
    n.fc6 = L.Convolution(n.pool1, num_output=8, kernel_size=fc6_kernel, param=CONV, **extra)
    n.relu6 = L.ReLU(n.fc6, in_place=True)
    n.fc7 = L.Convolution(n.relu6, num_output=8, kernel_size=1, param=CONV)
    n.score_fr = L.Convolution(n.fc7, num_output=classes, kernel_size=1, param=CONV)
    n.upscore = L.Deconvolution(n.score_fr, convolution_param=dict(
        num_output=classes, kernel_size=4, stride=2, bias_term=False), param=[dict(lr_mult=0)])
    return netspec.Net(n.to_proto(), netspec.TEST)


def v1_vgg_like(path, rng):
    """A V1 ("layers {type: INNER_PRODUCT}") caffemodel with legacy 4-D blob dims, like the
    VGG_ILSVRC releases: conv1, fc6 = InnerProduct over a 4×5×5 pool, fc7, fc8."""
    V1 = caffe_pb2.V1LayerParameter
    arrays = {
        "conv1": [rng.randn(4, 3, 3, 3), rng.randn(4)],
        "fc6": [rng.randn(8, 4 * 5 * 5), rng.randn(8)],
        "fc7": [rng.randn(8, 8), rng.randn(8)],
        "fc8": [rng.randn(10, 8), rng.randn(10)],
    }
    net = caffe_pb2.NetParameter(name="VGG_like")
    for name, blobs in arrays.items():
        layer = net.layers.add(name=name, type=V1.CONVOLUTION if name == "conv1" else
                               V1.INNER_PRODUCT)
        for a in blobs:
            dims = (1,) * (4 - a.ndim) + a.shape
            b = layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
            b.data.extend(a.astype(np.float32).ravel().tolist())
    path.write_bytes(net.SerializeToString())
    return {k: [a.astype(np.float32) for a in v] for k, v in arrays.items()}


# -- bilinear kernels -----------------------------------------------------------------------------


def test_upsample_filt_k4_and_k16():
    np.testing.assert_allclose(surgery.bilinear_kernel(4)[0], [0.0625, 0.1875, 0.1875, 0.0625])
    np.testing.assert_allclose(surgery.bilinear_kernel(4)[1] / 0.75, [0.25, 0.75, 0.75, 0.25])
    k16 = surgery.bilinear_kernel(16)
    assert k16.shape == (16, 16) and k16.max() == pytest.approx((1 - 0.5 / 8) ** 2)
    np.testing.assert_allclose(surgery.bilinear_kernel(3)[1], [0.5, 1, 0.5])


@pytest.mark.parametrize("k", [1, 4, 5, 8, 9, 16, 32, 64])
def test_profile_equals_caffes_bilinear_filler(k):
    """§C.4: the 1-D profile of Caffe's BilinearFiller for the kernel sizes it is made for
    (k = 2f - f%2 for an upsampling factor f: 4, 8, 16, 32, 64; 5, 9 ...); only the channel
    layout differs."""
    np.testing.assert_allclose(surgery.bilinear_kernel(k), _bilinear((1, 1, k, k))[0, 0].numpy(),
                               atol=1e-7)


@pytest.mark.parametrize("k", [2, 3, 63])
def test_profile_is_symmetric_where_caffes_filler_is_not(k):
    """FCN's filter stays centred for other sizes (e.g. FCN-AlexNet's k63); Caffe's filler
    assumes k = 2f - f%2 and is lopsided there."""
    filt = surgery.bilinear_kernel(k)
    np.testing.assert_allclose(filt, filt[::-1, ::-1])
    assert not np.allclose(filt, _bilinear((1, 1, k, k))[0, 0].numpy())


def test_bilinear_weights_are_diagonal():
    w = surgery.bilinear_weights((3, 3, 4, 4))
    for i in range(3):
        for j in range(3):
            expect = surgery.bilinear_kernel(4) if i == j else np.zeros((4, 4))
            np.testing.assert_array_equal(w[i, j], expect)
    depthwise = surgery.bilinear_weights((3, 1, 4, 4))
    assert all(np.array_equal(depthwise[c, 0], surgery.bilinear_kernel(4)) for c in range(3))
    with pytest.raises(WeightsError, match="square channel map"):
        surgery.bilinear_weights((3, 2, 4, 4))
    with pytest.raises(WeightsError, match="square kernel"):
        surgery.bilinear_weights((3, 3, 4, 2))


def test_interp_sets_deconvolutions_and_zeroes_off_diagonals():
    net = tiny_fcn()
    net.params["upscore"][0].data = np.ones((3, 3, 4, 4), np.float32)  # junk off-diagonals
    assert surgery.interp(net) == ["upscore"]  # default: every Deconvolution
    np.testing.assert_array_equal(net.params["upscore"][0].data,
                                  surgery.bilinear_weights((3, 3, 4, 4)))
    assert surgery.interp(net, ["upscore"]) == ["upscore"]
    with pytest.raises(WeightsError, match="no layer"):
        surgery.interp(net, ["nope"])
    with pytest.raises(WeightsError, match="square channel map"):
        surgery.interp(net, ["fc6"])  # (8, 4, 5, 5): not an upsampling kernel


def test_interp_upsamples_a_constant_map_to_a_constant():
    """With the diagonal kernel, a stride-2 k4 deconv of a constant map is that constant inside."""
    net = tiny_fcn()
    surgery.interp(net)
    import torch
    import torch.nn.functional as F
    w = torch.from_numpy(net.params["upscore"][0].data.copy())
    x = torch.zeros(1, 3, 4, 4)
    x[0, 1] = 2.0
    y = F.conv_transpose2d(x, w, stride=2)
    np.testing.assert_allclose(y[0, 1, 2:-2, 2:-2].numpy(), 2.0, rtol=1e-6)
    assert float(y[0, 0].abs().max()) == 0 and float(y[0, 2].abs().max()) == 0


# -- transplant ------------------------------------------------------------------------------------


def test_transplant_v1_caffemodel_coerces_fc_layers(tmp_path):
    src = v1_vgg_like(tmp_path / "vgg.caffemodel", np.random.RandomState(0))
    net = tiny_fcn(fc6_kernel=5)
    report = surgery.transplant(net, str(tmp_path / "vgg.caffemodel"))
    p = net.params
    np.testing.assert_array_equal(p["conv1"][0].data, src["conv1"][0])
    np.testing.assert_array_equal(p["conv1"][1].data, src["conv1"][1])
    np.testing.assert_array_equal(p["fc6"][0].data, src["fc6"][0].reshape(8, 4, 5, 5))
    np.testing.assert_array_equal(p["fc7"][0].data, src["fc7"][0].reshape(8, 8, 1, 1))
    actions = {(t.source, t.index): t.action for t in report.transfers}
    assert actions[("conv1", 0)] == "copy"  # legacy (num, channels, h, w) = the conv shape
    assert actions[("conv1", 1)] == "coerce"  # legacy (1, 1, 1, 4) -> (4,)
    assert actions[("fc6", 0)] == "coerce" and actions[("fc7", 1)] == "coerce"
    assert [t.source for t in report.by_action("drop")] == ["fc8"]
    assert report.copied == ["conv1", "fc6", "fc7"]
    assert report.untouched == ["score_fr", "upscore"]
    assert "dropping fc8" in str(report)


def test_inner_product_to_convolution_gives_the_same_scores():
    """An InnerProduct over a C×H×W blob equals the H×W convolution it is coerced into."""
    import torch
    import torch.nn.functional as F
    rng = np.random.RandomState(1)
    w = rng.randn(8, 100).astype(np.float32)
    x = rng.randn(1, 4, 5, 5).astype(np.float32)
    net = tiny_fcn(fc6_kernel=5)
    surgery.transplant(net, {"fc6": [w, np.zeros(8, np.float32)]})
    conv = F.conv2d(torch.from_numpy(x), torch.from_numpy(net.params["fc6"][0].data.copy()))
    np.testing.assert_allclose(conv.numpy().ravel(), w @ x.ravel(), rtol=1e-5, atol=1e-5)


def test_transplant_dilated_fc6_takes_the_taps_the_dilated_kernel_covers(tmp_path):
    """3×3 dilation 2 (extent 5) from a 5×5 InnerProduct-as-kernel: taps 0, 2, 4."""
    src = v1_vgg_like(tmp_path / "vgg.caffemodel", np.random.RandomState(2))
    net = tiny_fcn(fc6_kernel=3, fc6_dilation=2)
    report = surgery.transplant(net, str(tmp_path / "vgg.caffemodel"))
    w5 = src["fc6"][0].reshape(8, 4, 5, 5)
    np.testing.assert_array_equal(net.params["fc6"][0].data, w5[:, :, ::2, ::2])
    np.testing.assert_array_equal(net.params["fc6"][0].data[:, :, 1, 2], w5[:, :, 2, 4])
    np.testing.assert_array_equal(net.params["fc6"][1].data, src["fc6"][1])
    fc6 = [t for t in report.transfers if t.source == "fc6"]
    assert [t.action for t in fc6] == ["dilate", "coerce"]
    assert "dilating fc6 -> fc6 0" in str(fc6[0])


def test_dilate_kernel_vgg_fc6_shape():
    w7 = np.arange(2 * 3 * 7 * 7, dtype=np.float32).reshape(2, 3, 7, 7)
    w3 = surgery.dilate_kernel(w7, 3)
    assert w3.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(w3[1, 2], w7[1, 2][np.ix_([0, 3, 6], [0, 3, 6])])
    with pytest.raises(WeightsError):
        surgery.dilate_kernel(w7, 4)


def test_transplant_mismatch_modes(tmp_path):
    src = v1_vgg_like(tmp_path / "vgg.caffemodel", np.random.RandomState(3))
    path = str(tmp_path / "vgg.caffemodel")
    with pytest.raises(WeightsError, match="cannot fit blob 0 of source layer 'fc6'"):
        surgery.transplant(tiny_fcn(fc6_kernel=3), path)  # 3×3 undilated: 36 of 100 values
    net = tiny_fcn(fc6_kernel=3)
    report = surgery.transplant(net, path, mismatch="skip")
    assert not np.any(net.params["fc6"][0].data)
    assert [t.action for t in report.transfers if t.source == "fc6"] == ["skip", "coerce"]
    net = tiny_fcn(fc6_kernel=3, fc6_dilation=2)
    surgery.transplant(net, path, mismatch="flat", dilate=False)  # upstream's numpy .flat copy
    np.testing.assert_array_equal(net.params["fc6"][0].data.ravel(), src["fc6"][0].ravel()[:288])


def test_transplant_from_a_net_and_a_current_caffemodel_with_suffix(tmp_path):
    rng = np.random.RandomState(4)
    old = tiny_fcn()
    for blobs in old.params.values():
        for b in blobs:
            b.data = rng.randn(*b.data.shape).astype(np.float32)
    old.save(str(tmp_path / "old.caffemodel"))
    for source in (old, str(tmp_path / "old.caffemodel")):
        new = tiny_fcn()
        report = surgery.transplant(new, source)
        assert report.copied == ["conv1", "fc6", "fc7", "score_fr", "upscore"]
        assert {t.action for t in report.transfers} == {"copy"}
        for name in old.params:
            for a, b in zip(old.params[name], new.params[name]):
                np.testing.assert_array_equal(a.data, b.data)
    # a suffix maps source 'conv1' to target 'conv1color' (nyud color-hha style); none here
    report = surgery.transplant(tiny_fcn(), old, suffix="color")
    assert report.copied == [] and len(report.by_action("drop")) == 5


def test_zero_layers_reports_what_still_needs_weights(tmp_path):
    net = tiny_fcn()
    assert surgery.zero_layers(net) == ["conv1", "fc6", "fc7", "score_fr", "upscore"]
    assert surgery.zero_layers(net, include_frozen=False) == ["conv1", "fc6", "fc7", "score_fr"]
    v1_vgg_like(tmp_path / "vgg.caffemodel", np.random.RandomState(5))
    surgery.transplant(net, str(tmp_path / "vgg.caffemodel"))
    assert surgery.zero_layers(net) == ["score_fr", "upscore"]
    surgery.interp(net)
    assert surgery.zero_layers(net) == ["score_fr"]  # zero by design in FCN


def test_zoo_deconvolutions_are_interp_compatible():
    """Every upsampling layer of the zoo FCNs is a (C, C, k, k) group-1 blob interp can fill."""
    from netspec.authoring import zoo
    for name in ("fcn8s_voc", "fcn2s_vgg16_voc"):
        for layer in zoo.net(name, "deploy").layer:
            if layer.type == "Deconvolution":
                cp = layer.convolution_param
                assert cp.group == 1 and not cp.bias_term and layer.param[0].lr_mult == 0
                k = cp.kernel_size[0]
                w = surgery.bilinear_weights((cp.num_output, cp.num_output, k, k))
                assert w.shape == (21, 21, k, k)


def test_surgery_tool_writes_the_transplanted_net(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    src = v1_vgg_like(tmp_path / "vgg.caffemodel", np.random.RandomState(1))
    from netspec.formats import prototxt
    prototxt.write_text(tiny_fcn(fc6_kernel=5).net_param, str(tmp_path / "new.prototxt"))
    r = subprocess.run([sys.executable, str(repo / "tools" / "surgery.py"), str(tmp_path / "new.prototxt"),
                        str(tmp_path / "vgg.caffemodel"), str(tmp_path / "out.caffemodel")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "dropping fc8" in r.stdout and "bilinear: upscore" in r.stdout and "still zero: score_fr" in r.stdout
    out = netspec.Net(str(tmp_path / "new.prototxt"), netspec.TEST, weights=str(tmp_path / "out.caffemodel"))
    np.testing.assert_array_equal(out.params["fc6"][0].data, src["fc6"][0].reshape(8, 4, 5, 5))
    np.testing.assert_allclose(out.params["upscore"][0].data, surgery.bilinear_weights((3, 3, 4, 4)))
    # a source whose fc6 cannot be coerced (another kernel size): exit 2 with the blob named
    prototxt.write_text(tiny_fcn(fc6_kernel=3).net_param, str(tmp_path / "k3.prototxt"))
    r = subprocess.run([sys.executable, str(repo / "tools" / "surgery.py"), str(tmp_path / "k3.prototxt"),
                        str(tmp_path / "vgg.caffemodel"), str(tmp_path / "bad.caffemodel")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "fc6" in r.stderr and not (tmp_path / "bad.caffemodel").exists()


def test_training_warns_about_zero_layers_frozen_or_not(tmp_path, caplog):
    import logging
    from netspec.solver.solvers import Solver
    (tmp_path / "net.prototxt").write_text(str(tiny_fcn().net_param))
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    s = Solver(str(tmp_path / "solver.prototxt"))
    with caplog.at_level(logging.WARNING, logger="netspec"):
        s.warn_zero_layers()
    msgs = [r.getMessage() for r in caplog.records]
    assert any("'upscore' (Deconvolution) is frozen (lr_mult 0) and all zero" in m and "tools/surgery.py" in m
               for m in msgs)
    assert any("'score_fr' (Convolution) has all-zero weights" in m for m in msgs)
    caplog.clear()
    surgery.interp(s.net)
    with caplog.at_level(logging.WARNING, logger="netspec"):
        s.warn_zero_layers()
    assert not any("upscore" in r.getMessage() for r in caplog.records)
