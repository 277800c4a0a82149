"""LRN, BatchNorm and MVN against Caffe's formulas."""
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext, infer_top_shapes
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS


def build(text, shape=(2, 6, 4, 5), phase=caffe_pb2.TEST):
    lp = text_format.Parse(f'name: "n" bottom: "x" top: "y" {text}', caffe_pb2.LayerParameter())
    return LAYERS.get(lp.type).builder(lp, [tuple(shape)], BuildContext(phase=phase, where="t:1: "))


def grad_check(m, x, ref_fn):
    """Forward and backward of ``m`` equal those of the reference expression (autograd on float64)."""
    xa = x.clone().requires_grad_(True)
    y = m(xa)
    g = torch.randn(y.shape)
    y.backward(g)
    xr = x.double().requires_grad_(True)
    yr = ref_fn(xr)
    yr.backward(g.double())
    torch.testing.assert_close(y.detach(), yr.detach().float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xr.grad.float(), rtol=1e-4, atol=1e-5)


def test_lrn_across_channels():
    n, alpha, beta, k = 5, 0.5, 0.75, 2.0

    def ref(x):
        sq = F.pad(x * x, (0, 0, 0, 0, n // 2, n // 2))
        s = sum(sq[:, i:i + x.shape[1]] for i in range(n))  # window centred on the channel
        return x * (k + alpha / n * s) ** -beta

    m = build(f'type: "LRN" lrn_param {{ local_size: {n} alpha: {alpha} beta: {beta} k: {k} }}')
    grad_check(m, torch.randn(2, 6, 4, 5), ref)


def test_lrn_within_channel_divides_by_full_window():
    n, alpha, beta = 3, 0.3, 0.75

    def ref(x):
        sq = F.pad(x * x, (1, 1, 1, 1))
        s = sum(sq[..., i:i + x.shape[2], j:j + x.shape[3]] for i in range(n) for j in range(n))
        return x * (1 + alpha * s / (n * n)) ** -beta  # k is ignored

    m = build(f'type: "LRN" lrn_param {{ local_size: {n} alpha: {alpha} beta: {beta} k: 7 '
              'norm_region: WITHIN_CHANNEL }')
    grad_check(m, torch.randn(2, 6, 4, 5), ref)


def test_lrn_rejects_even_sizes_and_non_4d():
    with pytest.raises(LayerError, match="odd"):
        build('type: "LRN" lrn_param { local_size: 4 }')
    with pytest.raises(LayerError, match="4 axes"):
        build('type: "LRN"', (2, 6, 4))


def test_batchnorm_blobs_and_global_stats():
    m = build('type: "BatchNorm" batch_norm_param { eps: 1e-3 }')
    assert [(n, tuple(p.shape), p.requires_grad) for n, p in m.named_parameters()] == [
        ("mean", (6,), False), ("variance", (6,), False), ("scale_factor", (1,), False)]
    assert m.use_global_stats  # TEST phase default
    with torch.no_grad():
        m.mean.copy_(torch.arange(6.0))
        m.variance.copy_(torch.arange(6.0) + 1)
        m.scale_factor.fill_(0.5)
    x = torch.randn(2, 6, 4, 5)
    mean, var = (torch.arange(6.0) / 0.5)[:, None, None], ((torch.arange(6.0) + 1) / 0.5)[:, None, None]
    grad_check(m, x, lambda x: (x - mean.double()) / torch.sqrt(var.double() + 1e-3))
    with torch.no_grad():
        m.scale_factor.zero_()  # 0 scale factor reads as zero statistics
    torch.testing.assert_close(m(x), x / torch.sqrt(torch.tensor(1e-3)))
    assert infer_top_shapes(m, [(2, 6, 4, 5)]) == [(2, 6, 4, 5)]


def test_batchnorm_train_uses_batch_stats_and_accumulates():
    m = build('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 }', phase=caffe_pb2.TRAIN)
    assert not m.use_global_stats
    xs = [torch.randn(2, 6, 4, 5) * 3 + 1 for _ in range(2)]
    sf, macc, vacc = 0.0, torch.zeros(6), torch.zeros(6)
    for x in xs:
        mean = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=False)
        grad_check(m, x, lambda x: (x - x.mean((0, 2, 3), keepdim=True))
                   / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5))
        sf, macc, vacc = 0.9 * sf + 1, 0.9 * macc + mean, 0.9 * vacc + 40 / 39 * var  # m = N*H*W = 40
        # grad_check ran the layer once: one update per forward
        torch.testing.assert_close(m.scale_factor, torch.tensor([sf]))
        torch.testing.assert_close(m.mean, macc)
        torch.testing.assert_close(m.variance, vacc)


def test_batchnorm_2d_input_and_explicit_global_stats():
    m = build('type: "BatchNorm" batch_norm_param { use_global_stats: true }', (4, 3), phase=caffe_pb2.TRAIN)
    assert m.use_global_stats and m.mean.shape == (3,)
    m = build('type: "BatchNorm" batch_norm_param { use_global_stats: false }', (4, 3))
    x = torch.randn(4, 3)
    torch.testing.assert_close(m(x), (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))
    torch.testing.assert_close(m.variance, x.var(0, unbiased=True))


def test_batchnorm_refuses_learned_statistics():
    with pytest.raises(LayerError, match="lr_mult"):
        build('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }')


@pytest.mark.parametrize("across", [False, True])
def test_mvn_adds_eps_to_the_standard_deviation(across):
    dims = (1, 2, 3) if across else (2, 3)
    eps = 1e-2  # large, so that sqrt(var) + eps and sqrt(var + eps) differ visibly
    m = build(f'type: "MVN" mvn_param {{ across_channels: {str(across).lower()} eps: {eps} }}')
    x = torch.randn(2, 6, 4, 5)
    xc = x - x.mean(dims, keepdim=True)
    std = torch.sqrt((xc * xc).mean(dims, keepdim=True)) + eps
    xa = x.clone().requires_grad_(True)
    y = m(xa)
    g = torch.randn(y.shape)
    y.backward(g)
    y = y.detach()
    torch.testing.assert_close(y, xc / std)
    # Caffe's backward: (g - mean(g) - y * mean(g * y)) / (std + eps)
    ref = (g - g.mean(dims, keepdim=True) - y * (g * y).mean(dims, keepdim=True)) / std
    torch.testing.assert_close(xa.grad, ref)


def test_mvn_constant_input_stays_finite():
    m = build('type: "MVN"')
    x = torch.ones(1, 2, 3, 3, requires_grad=True)
    y = m(x)
    y.backward(torch.randn(y.shape))
    assert torch.equal(y, torch.zeros(1, 2, 3, 3)) and torch.isfinite(x.grad).all()


def test_mvn_mean_only_and_2d():
    m = build('type: "MVN" mvn_param { normalize_variance: false }')
    x = torch.randn(2, 6, 4, 5)
    grad_check(m, x, lambda x: x - x.mean((2, 3), keepdim=True))
    m = build('type: "MVN"', (3, 4))
    assert torch.equal(m(torch.randn(3, 4)), torch.zeros(3, 4))  # one value per (n, c)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_window_too_large_for_a_blob_is_refused_at_build_time(region):
    from google.protobuf import text_format
    import netspec
    from netspec.errors import LayerError
    from netspec.proto import caffe_pb2
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
            f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: 2000000001 '
            f'norm_region: {region} }} }}')
    with pytest.raises(LayerError, match=r"layer 'n' \(LRN\): local_size 2000000001 pads .* more than Caffe's INT_MAX"):
        netspec.Net(text_format.Parse(text, caffe_pb2.NetParameter()), netspec.TEST)
