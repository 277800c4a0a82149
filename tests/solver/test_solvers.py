"""Solver.apply_update on frozen (lr_mult 0) blobs, checked against Caffe's SGD formulas
(history = local_rate * diff + momentum * history; param -= history)."""
import numpy as np
import pytest
import torch

from netspec.formats import prototxt
from netspec.solver.solvers import Solver

NET = """
name: "frozen"
force_backward: %s
layer { name: "in" type: "Input" top: "x" top: "y"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h" param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "p"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def make(force_backward=False, **fields):
    sp = prototxt.parse_solver(f"""base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.01
                                   max_iter: 10 display: 0 snapshot_prefix: "" """)
    sp.net_param.CopyFrom(prototxt.parse_net(NET % ("true" if force_backward else "false")))
    for k, v in fields.items():
        setattr(sp, k, v)
    torch.manual_seed(0)
    s = Solver(sp, device="cpu")
    rng = np.random.RandomState(0)
    s.net.blobs["x"].data[...] = rng.randn(2, 3)
    s.net.blobs["y"].data[...] = rng.randn(2, 2)
    return s


def test_frozen_blob_with_zero_history_is_exactly_unchanged():
    s = make()
    w1 = s.net.params["ip1"][0].data.copy()
    s.step(3)
    np.testing.assert_array_equal(s.net.params["ip1"][0].data, w1)
    assert len(s._active()[0]) == 2   # ip2's two blobs: the frozen ones cost nothing
    assert not s.history[0].any()


def test_frozen_blob_with_history_keeps_decaying_as_caffe():
    # A frozen blob restored with a non-zero history (say, trained before being frozen): Caffe still applies
    # history = 0.9 * history (local rate 0) and param -= history every iteration.
    s = make()
    h0 = np.full((4, 3), 0.5, np.float32)
    s.history[0].copy_(torch.from_numpy(h0))
    s._active_cache = None
    w0 = s.net.params["ip1"][0].data.copy()
    s.step(2)
    expected = w0 - np.float32(0.9) * h0 - np.float32(0.9) * (np.float32(0.9) * h0)
    np.testing.assert_allclose(s.net.params["ip1"][0].data, expected, rtol=1e-6)
    np.testing.assert_allclose(s.history[0].numpy(), 0.81 * h0, rtol=1e-6)


def test_clipping_norm_counts_forced_diffs_of_frozen_blobs():
    # force_backward computes ip1's diffs; Caffe's ClipGradients takes the L2 norm over every learnable blob.
    s = make(force_backward=True, clip_gradients=1e-3, weight_decay=0.0, momentum=0.0)
    s.net.clear_param_diffs()
    s.forward_backward()
    grads = {n: [b.diff.astype(np.float64) for b in blobs] for n, blobs in s.net.params.items()}
    norm = np.sqrt(sum((g ** 2).sum() for gs in grads.values() for g in gs))
    assert np.sqrt(sum((g ** 2).sum() for g in grads["ip1"])) > 0
    w2 = s.net.params["ip2"][0].data.copy()
    s.apply_update()
    expected = w2 - np.float32(0.1) * (grads["ip2"][0] * (1e-3 / norm))
    np.testing.assert_allclose(s.net.params["ip2"][0].data, expected, rtol=1e-5)
    assert not s.net.params["ip1"][0].diff.any()   # a skipped blob's diff ends as its zero history


def test_step_clears_diffs_first_and_leaves_caffes_update_values_as_diffs():
    # Caffe's Step: ClearParamDiffs, ForwardBackward, then per blob: diff += weight_decay * decay_mult * w,
    # history = momentum * history + local_rate * diff, diff = history, w -= diff. A diff left over from before
    # (here: written by hand) must not reach the update; ip2's bias has decay_mult 0 and lr_mult 2.
    text = NET.replace('top: "p"', 'top: "p" param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }')
    sp = prototxt.parse_solver('base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.01 max_iter: 10 '
                               'display: 0 snapshot_prefix: ""')
    sp.net_param.CopyFrom(prototxt.parse_net(text % "false"))
    torch.manual_seed(0)
    s = Solver(sp, device="cpu")
    x, y = np.random.RandomState(0).randn(2, 3), np.random.RandomState(1).randn(2, 2)
    s.net.blobs["x"].data[...] = x
    s.net.blobs["y"].data[...] = y
    w, b = (blob.data.astype(np.float64) for blob in s.net.params["ip2"])
    s.net.forward()
    h = s.net.blobs["h"].data.astype(np.float64)  # ip1 is frozen: h stays
    hist = [np.zeros_like(w), np.zeros_like(b)]
    for it in range(2):
        s.net.params["ip2"][0].diff[...] = 1e3   # stale: cleared by the step
        p = h @ w.T + b
        gp = (p - y) / 2                          # EuclideanLoss: 1/(2N) sum ||p - y||^2, N = 2
        gw, gb = gp.T @ h + 0.01 * w, gp.sum(0)
        hist = [0.9 * hist[0] + 0.1 * gw, 0.9 * hist[1] + 0.2 * gb]
        w, b = w - hist[0], b - hist[1]
        s.step(1)
        np.testing.assert_allclose(s.net.params["ip2"][0].data, w, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(s.net.params["ip2"][1].data, b, rtol=1e-5, atol=1e-7)
        for blob, hh in zip(s.net.params["ip2"], hist):
            np.testing.assert_allclose(blob.diff, hh, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("field, value, words", [
    ("regularization_type", "L3", "Unknown regularization type: L3"),
    ("iter_size", 0, "iter_size must be at least 1"),
    ("average_loss", 0, "average_loss must be at least 1"),
    ("lr_policy", "step", "needs stepsize > 0"),
    ("snapshot_format", 0, "HDF5 is not supported"),
])
def test_bad_settings_are_refused_at_start_not_after_a_pass(field, value, words):
    from netspec.errors import SolverError
    with pytest.raises(SolverError, match=words):
        make(**{field: value})


@pytest.mark.parametrize("fields, words", [
    (dict(lr_policy="poly", power=0.9, max_iter=0), "needs max_iter > 0"),
    (dict(lr_policy="inv", gamma=-1.0, power=0.75), "1 \\+ gamma \\* iter reaches -9.0"),
    (dict(type="Adam", momentum2=2.0), "0 <= momentum2 < 1"),
])
def test_learning_rate_maths_without_a_value_is_refused_at_start(fields, words):
    from netspec.errors import SolverError
    with pytest.raises(SolverError, match=words):
        make(**fields)


def test_learning_rate_edges_give_caffe_values_or_a_clear_error():
    from netspec.errors import SolverError
    from netspec.solver.solvers import learning_rate
    p = prototxt.parse_solver('base_lr: 0.1 lr_policy: "sigmoid" gamma: 1 stepsize: 100')
    assert learning_rate(p, 10000)[0] == pytest.approx(0.1)
    assert learning_rate(p, 0)[0] == pytest.approx(0.1 / (1 + np.exp(100)))  # e^-100 is tiny, not an overflow
    p.gamma = -1   # e^(it - 100) overflows a double for it > 809: the rate is 0 there
    assert learning_rate(p, 10000)[0] == 0.0
    poly = prototxt.parse_solver('base_lr: 0.1 lr_policy: "poly" power: 0.9 max_iter: 10')
    assert learning_rate(poly, 10)[0] == 0.0
    with pytest.raises(SolverError, match="iteration 11 is past max_iter 10"):
        learning_rate(poly, 11)


def test_test_iter_zero_skips_the_pass_and_negative_is_refused(tmp_path, monkeypatch, tiny_net_text):
    from netspec.errors import SolverError
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(tiny_net_text(loss=True))
    base = 'net: "net.prototxt"\ntest_interval: 2\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 4\n' \
           'snapshot_prefix: "s"\ndisplay: 0\n'
    (tmp_path / "solver.prototxt").write_text(base + "test_iter: 0\n")
    s = Solver("solver.prototxt")
    s.solve()
    assert s.iter == 4 and s.test_all() == [{}]
    (tmp_path / "solver.prototxt").write_text(base + "test_iter: -3\n")
    with pytest.raises(SolverError, match=r"test_iter must be >= 0"):
        Solver("solver.prototxt")
