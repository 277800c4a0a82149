"""SoftmaxWithLoss with ``loss_param { class_weight }`` (a netspec extension) in a prototxt net, against weighted
cross-entropy written out by hand in numpy:

    loss = sum_i w[y_i] * -log p_i[y_i] / n          dloss/dx_i = w[y_i] * (p_i - onehot(y_i)) / n

over the positions i whose label is not ignore_label (the others get neither loss nor gradient), with the
normaliser as SoftmaxWithLoss's docstring defines it for class weights: VALID n = sum of w[y_i] over the valid
positions (1 when that sum is 0), BATCH_SIZE n = N."""
import numpy as np
import pytest

import netspec
from netspec.formats import prototxt

WEIGHTS = (0.5, 2.0, 1.0, 0.25)
NET = """
name: "weighted"
force_backward: true
layer {{ name: "input" type: "Input" top: "score" top: "label"
         input_param {{ shape {{ dim: 2 dim: 4 dim: 3 dim: 5 }} shape {{ dim: 2 dim: 1 dim: 3 dim: 5 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
         loss_param {{ ignore_label: 255 normalization: {mode} {weights} }} }}
"""


def _inputs(seed=0, shape=(2, 4, 3, 5)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32) * 2
    y = rng.integers(0, shape[1], size=(shape[0], 1, *shape[2:])).astype(np.float32)
    y[0, 0, 1, :] = 255          # a row of ignored pixels
    y[-1, 0, -1, -1] = 255
    return x, y


def hand_weighted_ce(x, y, w, mode):
    """The formula above, in float64, one position at a time."""
    x, w = x.astype(np.float64), np.asarray(w, np.float64)
    N, C, H, W = x.shape
    total, n_valid_w = 0.0, 0.0
    grad = np.zeros_like(x)
    for n in range(N):
        for h in range(H):
            for j in range(W):
                label = int(y[n, 0, h, j])
                if label == 255:
                    continue
                z = x[n, :, h, j]
                p = np.exp(z - z.max())
                p /= p.sum()
                total += w[label] * -np.log(p[label])
                n_valid_w += w[label]
                onehot = np.eye(C)[label]
                grad[n, :, h, j] = w[label] * (p - onehot)
    norm = {"VALID": n_valid_w if n_valid_w > 0 else 1.0, "BATCH_SIZE": float(N)}[mode]
    return total / norm, grad / norm


def _net(tmp_path, mode, weights=WEIGHTS):
    text = NET.format(mode=mode, weights=" ".join(f"class_weight: {v}" for v in weights))
    (tmp_path / "net.prototxt").write_text(text)
    return netspec.Net(str(tmp_path / "net.prototxt"), netspec.TRAIN)


@pytest.mark.parametrize("mode", ["VALID", "BATCH_SIZE"])
def test_loss_and_gradient_equal_the_hand_computation(tmp_path, mode):
    x, y = _inputs()
    net = _net(tmp_path, mode)
    net.forward(score=x, label=y)
    net.backward()
    want_loss, want_grad = hand_weighted_ce(x, y, WEIGHTS, mode)
    assert float(net.blobs["loss"].data) == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(net.blobs["score"].diff, want_grad, rtol=1e-4, atol=1e-7)
    ignored = np.broadcast_to(y == 255, x.shape)
    assert not net.blobs["score"].diff[ignored].any()  # ignored pixels: no gradient at all


def test_weights_change_the_loss_as_the_formula_says(tmp_path):
    """Doubling every weight leaves the VALID loss unchanged (it is a weighted mean) and doubles the
    BATCH_SIZE one; the weights are not a no-op (unit weights give a different VALID loss)."""
    x, y = _inputs(seed=1)
    losses = {}
    for mode in ("VALID", "BATCH_SIZE"):
        for tag, w in (("w", WEIGHTS), ("2w", [2 * v for v in WEIGHTS]), ("1", [1.0] * 4)):
            net = _net(tmp_path, mode, w)
            net.forward(score=x, label=y)
            losses[mode, tag] = float(net.blobs["loss"].data)
    assert losses["VALID", "2w"] == pytest.approx(losses["VALID", "w"], rel=1e-6)
    assert losses["BATCH_SIZE", "2w"] == pytest.approx(2 * losses["BATCH_SIZE", "w"], rel=1e-6)
    assert abs(losses["VALID", "1"] - losses["VALID", "w"]) > 1e-3
    assert losses["VALID", "1"] == pytest.approx(hand_weighted_ce(x, y, [1.0] * 4, "VALID")[0], rel=1e-5)


def test_valid_normaliser_of_zero_total_weight_is_one(tmp_path):
    x, y = _inputs(seed=2)
    y[y != 255] = 1  # every valid pixel in a class of weight 0
    net = _net(tmp_path, "VALID", (1.0, 0.0, 1.0, 1.0))
    net.forward(score=x, label=y)
    net.backward()
    assert float(net.blobs["loss"].data) == 0.0 and not net.blobs["score"].diff.any()


def test_the_zoo_idd_loss_layer(tmp_path):
    """The SoftmaxWithLoss layer the zoo writes for IDD (26 weights from the packer's file), taken out of the
    generated train.prototxt text, in a net of its own."""
    from netspec.authoring.zoo.unet import unet
    w = np.linspace(0.3, 1.0, 26)
    (tmp_path / "class_weights.txt").write_text("".join(f"{v:.6f}\n" for v in w))
    text = prototxt.to_text(unet("train", class_weights=str(tmp_path / "class_weights.txt")))
    layer = text[text.index('layer {\n  name: "loss"'):]
    (tmp_path / "zoo.prototxt").write_text(
        'force_backward: true\nlayer { name: "input" type: "Input" top: "score" top: "label" input_param { '
        'shape { dim: 1 dim: 26 dim: 4 dim: 6 } shape { dim: 1 dim: 1 dim: 4 dim: 6 } } }\n' + layer)
    net = netspec.Net(str(tmp_path / "zoo.prototxt"), netspec.TRAIN)
    x, y = _inputs(seed=3, shape=(1, 26, 4, 6))
    net.forward(score=x, label=y)
    net.backward()
    want_loss, want_grad = hand_weighted_ce(x, y, w, "VALID")
    assert float(net.blobs["loss"].data) == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(net.blobs["score"].diff, want_grad, rtol=1e-4, atol=1e-7)
