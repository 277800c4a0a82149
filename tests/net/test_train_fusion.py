"""The training pass's fused chains (BatchNorm -> Scale -> ReLU as one batch_norm kernel, Eltwise SUM -> ReLU with
an in-place ReLU) and BatchNorm's batch_norm kernel, checked against Caffe's formulas computed here in float64:

    BatchNorm (batch statistics): mean and biased variance over N, H, W; y = (x - mean) / sqrt(var + eps);
        mean_blob = maf * mean_blob + mean, var_blob = maf * var_blob + m/(m-1) * var, sf = maf * sf + 1
        backward: dx = (dy - mean(dy) - y * mean(dy * y)) / sqrt(var + eps)
    Scale: y = x * gamma + beta; ReLU: max(x, 0); Eltwise SUM: a + b; EuclideanLoss: sum((a - b)^2) / (2N).
"""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import netspec
from netspec.proto import caffe_pb2

NET = """
name: "fused"
force_backward: true
layer { name: "in" type: "Input" top: "data" top: "target"
        input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { moving_average_fraction: 0.9 } }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "r" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "sum" type: "Eltwise" bottom: "conv" bottom: "data" top: "sum" }
layer { name: "r2" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "loss" type: "EuclideanLoss" bottom: "sum" bottom: "target" top: "loss" }
"""
EPS, MAF = 1e-5, 0.9


def _net(seed=0):
    net = netspec.Net(text_format.Parse(NET, caffe_pb2.NetParameter()), netspec.TRAIN)
    rng = np.random.default_rng(seed)
    net.params["conv"][0].data[...] = rng.standard_normal((3, 3, 1, 1))
    net.params["conv"][1].data[...] = rng.standard_normal(3)
    net.params["bn"][0].data[...] = rng.uniform(-1, 1, 3)      # accumulated statistics to be updated
    net.params["bn"][1].data[...] = rng.uniform(1, 2, 3)
    net.params["bn"][2].data[...] = 3.0
    net.params["sc"][0].data[...] = rng.uniform(0.5, 1.5, 3)
    net.params["sc"][1].data[...] = rng.uniform(-0.5, 0.5, 3)
    net.blobs["data"].data[...] = rng.standard_normal((2, 3, 4, 5))
    net.blobs["target"].data[...] = rng.standard_normal((2, 3, 4, 5))
    return net


def _caffe(net):
    """Loss, blobs, diffs and updated statistics by Caffe's formulas (float64), from the net's current values."""
    x = net.blobs["data"].data.astype(np.float64)
    t = net.blobs["target"].data.astype(np.float64)
    w = net.params["conv"][0].data[:, :, 0, 0].astype(np.float64)
    b = net.params["conv"][1].data.astype(np.float64)
    g, beta = (net.params["sc"][i].data.astype(np.float64) for i in (0, 1))
    acc = [net.params["bn"][i].data.astype(np.float64).copy() for i in range(3)]
    n = x.shape[0]
    c = np.einsum("oc,nchw->nohw", w, x) + b[None, :, None, None]
    axes = (0, 2, 3)
    mean = c.mean(axes, keepdims=True)
    var = ((c - mean) ** 2).mean(axes, keepdims=True)
    xhat = (c - mean) / np.sqrt(var + EPS)
    s = xhat * g[None, :, None, None] + beta[None, :, None, None]
    r = np.maximum(s, 0)
    pre = r + x
    out = np.maximum(pre, 0)
    loss = ((out - t) ** 2).sum() / (2 * n)
    dpre = (out - t) / n * (pre > 0)
    ds = dpre * (s > 0)
    dg, dbeta = (ds * xhat).sum(axes), ds.sum(axes)
    dxhat = ds * g[None, :, None, None]
    dc = (dxhat - dxhat.mean(axes, keepdims=True) - xhat * (dxhat * xhat).mean(axes, keepdims=True)) / np.sqrt(var + EPS)
    dw = np.einsum("nohw,nchw->oc", dc, x)[:, :, None, None]
    db = dc.sum(axes)
    dx = dpre + np.einsum("oc,nohw->nchw", w, dc)
    m = c.size / c.shape[1]
    stats = [MAF * acc[0] + mean.ravel(), MAF * acc[1] + m / (m - 1) * var.ravel(), MAF * acc[2] + 1]
    return dict(loss=loss, conv=r, sum=out, conv_diff=dc, sum_diff=dpre, data_diff=dx,
                params={"conv": [dw, db], "sc": [dg, dbeta]}, stats=stats)


def _close(got, want, what, scale=None):
    """Within 1e-5 of ``want``'s largest magnitude (or of ``scale``)."""
    want = np.asarray(want, dtype=np.float64)
    scale = max(np.abs(want).max(), 1e-3) if scale is None else scale
    assert np.abs(np.asarray(got, dtype=np.float64) - want).max() <= 1e-5 * scale, what


def _close_params(net, want):
    """The param diffs; the convolution bias before batch-statistics BatchNorm has diff 0 in exact arithmetic,
    so its rounding is measured against the weight diff's scale."""
    for layer, grads in want["params"].items():
        for i, g in enumerate(grads):
            scale = np.abs(want["params"]["conv"][0]).max() if (layer, i) == ("conv", 1) else None
            _close(net.params[layer][i].diff, g, f"{layer} param {i} diff", scale)


def test_solver_pass_is_fused_and_follows_caffes_formulas():
    net = _net()
    heads, absorbed = net.module._train_plan(False)
    names = {n.index: n.name for n in net.module.nodes}
    assert sorted(names[i] for i in heads) == ["bn", "data_in_0_split", "sum"]  # the Split: one tensor
    assert sorted(names[i] for i in absorbed) == ["r", "r2", "sc"]
    want = _caffe(net)
    _close(net.forward_backward(), want["loss"], "loss")
    _close_params(net, want)
    for i, v in enumerate(want["stats"]):
        _close(net.params["bn"][i].data, v, f"bn blob {i}")


def test_pycaffe_forward_backward_keeps_caffes_blobs_and_diffs():
    """pycaffe's forward keeps every blob and each in-place blob's first version for its diff: the BatchNorm
    chain (in place on the convolution's top) is fused, and so is the Eltwise -> ReLU one (a new top), which shows
    its sum to pycaffe (which takes its gradient edge) before the in-place ReLU."""
    net = _net()
    heads, _ = net.module._train_plan(True)
    assert [net.module.nodes[i].name for i in heads] == ["bn", "sum"]
    want = _caffe(net)
    out = net.forward()
    _close(out["loss"], want["loss"], "loss")
    _close(net.blobs["conv"].data, want["conv"], "conv data (after the in-place Scale and ReLU)")
    _close(net.blobs["sum"].data, want["sum"], "sum data (after the in-place ReLU)")
    net.backward()
    _close(net.blobs["conv"].diff, want["conv_diff"], "conv diff (the convolution's output)")
    _close(net.blobs["sum"].diff, want["sum_diff"], "sum diff (the Eltwise output)")
    _close(net.blobs["data"].diff, want["data_diff"], "data diff")
    _close_params(net, want)
    for i, v in enumerate(want["stats"]):
        _close(net.params["bn"][i].data, v, f"bn blob {i}")


@pytest.mark.parametrize("checkpoint", [False, True])
def test_fused_and_plain_layers_agree(checkpoint):
    """Fused or layer by layer (and with activation checkpointing, which recomputes BatchNorm without updating
    its statistics twice): the same loss, diffs and statistics."""
    results = []
    for fuse in (True, False):
        net = _net()
        net.module.fuse = fuse
        net.configure(checkpoint=checkpoint)
        loss = net.forward_backward()
        results.append((loss, {f"{k}/{i}": (b.data.copy(), b.diff.copy()) for k, bl in net.params.items()
                               for i, b in enumerate(bl)}))
    (loss0, p0), (loss1, p1) = results
    assert loss0 == pytest.approx(loss1, rel=1e-6)
    for key in p0:
        for a, b in zip(p0[key], p1[key]):
            _close(a, b, key, np.abs(p1["conv/0"][1]).max() if key == "conv/1" else None)
    want = _caffe(_net())
    for i, v in enumerate(want["stats"]):
        _close(p0[f"bn/{i}"][0], v, f"bn blob {i}")


def test_one_value_per_channel_keeps_caffes_rule():
    """m == 1 (torch's kernel refuses it): Caffe's y = 0, the variance added with factor 1 (here 0)."""
    net = netspec.Net(text_format.Parse(NET.replace("dim: 4 dim: 5", "dim: 1 dim: 1")
                                        .replace("dim: 2 dim: 3", "dim: 1 dim: 3"), caffe_pb2.NetParameter()),
                      netspec.TRAIN)
    net.params["sc"][1].data[...] = [0.5, -0.5, 0.25]
    net.blobs["data"].data[...] = np.arange(3).reshape(1, 3, 1, 1)
    net.forward_backward()
    out = net.forward()
    _close(net.blobs["conv"].data.ravel(), [0.5, 0, 0.25], "ReLU(Scale(0))")
    assert np.all(net.params["bn"][1].data == 0)
    assert np.isfinite(out["loss"])


def test_batchnorm_kernel_matches_caffe_for_other_shapes():
    """The layer alone (no Scale): 2-D and 3-D bottoms, global statistics with a zero scale factor."""
    from netspec.layers.normalization import BatchNorm
    rng = np.random.default_rng(1)
    for shape in [(6, 4), (3, 4, 7)]:
        bn = BatchNorm(4, False, 0.5, 1e-3)
        x = rng.standard_normal(shape) * 3 + 2
        axes = tuple(d for d in range(len(shape)) if d != 1)
        keep = [1] * len(shape)
        keep[1] = 4
        mean, var = x.mean(axes), x.var(axes)
        y = bn(torch.tensor(x, dtype=torch.float32)).numpy()
        _close(y, (x - mean.reshape(keep)) / np.sqrt(var.reshape(keep) + 1e-3), f"{shape} output")
        m = x.size / 4
        _close(bn.variance.detach().numpy(), m / (m - 1) * var, f"{shape} variance blob")
        _close(bn.scale_factor.detach().numpy(), [1.0], "scale factor")
    bn = BatchNorm(4, True, 0.5, 1e-3)   # scale factor 0: mean and variance read as 0
    x = rng.standard_normal((2, 4, 3))
    _close(bn(torch.tensor(x, dtype=torch.float32)).numpy(), x / np.sqrt(1e-3), "global, scale factor 0")


def test_solver_pass_sees_a_replaced_layer_module():
    """The solver pass runs flat steps made once per plan; a layer module replaced afterwards (surgery, a user's
    own module) is used by the next pass, which then agrees with the unfused layer-by-layer run."""
    import torch

    class PlusInput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 3 * x

    fast, slow = _net(), _net()
    first = fast.forward_backward()
    for net in (fast, slow):
        key = next(n.key for n in net.module.nodes if n.name == "conv")
        setattr(net.module, key, PlusInput(getattr(net.module, key)))
    slow.module.fuse = False
    got, want = fast.forward_backward(), slow.forward_backward()
    assert abs(got - first) > 1e-3
    _close(got, want, "loss after the replacement")
