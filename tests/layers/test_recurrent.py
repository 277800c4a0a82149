"""RNN and LSTM against a float64 numpy unrolling of Caffe's RecurrentLayer nets."""
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netspec.errors import LayerError
from netspec.net.caffe_net import BuildContext
from netspec.proto import caffe_pb2
from netspec.registry import LAYERS

T, N, D, H = 4, 3, 5, 2


def build(type_, *shapes, expose=False):
    text = (f'name: "r" type: "{type_}" recurrent_param {{ num_output: {H} expose_hidden: {str(expose).lower()} '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 } }')
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    lp.bottom.extend(f"b{i}" for i in range(len(shapes)))
    n_tops = 1 + (2 if type_ == "LSTM" else 1) * expose
    lp.top.extend(f"t{i}" for i in range(n_tops))
    return LAYERS.get(type_).builder(lp, [tuple(s) for s in shapes], BuildContext(phase=caffe_pb2.TRAIN))


def sig(v):
    return 1 / (1 + np.exp(-v))


def lstm_ref(p, x, cont, static=None, h=None, c=None):
    W_xc, b_c, W_hc = p["W_xc"], p["b_c"], p["W_hc"]
    h = np.zeros((N, H)) if h is None else h
    c = np.zeros((N, H)) if c is None else c
    out = []
    for t in range(len(x)):
        g = W_hc @ (cont[t][:, None] * h).T + (W_xc @ x[t].reshape(N, -1).T) + b_c[:, None]
        if static is not None:
            g = g + p["W_xc_static"] @ static.reshape(N, -1).T
        i, f, o, gg = sig(g[:H].T), sig(g[H:2 * H].T), sig(g[2 * H:3 * H].T), np.tanh(g[3 * H:].T)
        c = cont[t][:, None] * f * c + i * gg
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def params(m):
    return {n: t.detach().double().numpy() for n, t in m.named_parameters()}


def test_lstm_blob_layout():
    m = build("LSTM", (T, N, D), (T, N), (N, 7))
    assert [(n, tuple(t.shape)) for n, t in m.named_parameters()] == [
        ("W_xc", (4 * H, D)), ("b_c", (4 * H,)), ("W_xc_static", (4 * H, 7)), ("W_hc", (4 * H, H))]
    m = build("RNN", (T, N, D), (T, N))
    assert [(n, tuple(t.shape)) for n, t in m.named_parameters()] == [
        ("W_xh", (H, D)), ("b_h", (H,)), ("W_hh", (H, H)), ("W_ho", (H, H)), ("b_o", (H,))]


def test_lstm_closed_form_with_reset_and_static():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(T, N, D)).astype(np.float32)
    s = rng.normal(size=(N, 7)).astype(np.float32)
    cont = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1]], np.float32)  # stream 1 restarts at t=2
    m = build("LSTM", x.shape, cont.shape, s.shape)
    xt = torch.tensor(x, requires_grad=True)
    contt = torch.tensor(cont, requires_grad=True)
    y = m(xt, contt, torch.tensor(s))
    ref, _, _ = lstm_ref(params(m), x, cont, s)
    assert y.shape == (T, N, H)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    y.sum().backward()
    assert xt.grad.abs().sum() > 0 and contt.grad is None  # Caffe never back-propagates into cont


def test_lstm_expose_hidden_and_carry_over():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(T, N, D)).astype(np.float32)
    cont = np.ones((T, N), np.float32)
    h0, c0 = rng.normal(size=(1, N, H)), rng.normal(size=(1, N, H))
    m = build("LSTM", x.shape, cont.shape, (1, N, H), (1, N, H), expose=True)
    y, hT, cT = m(torch.tensor(x), torch.tensor(cont), torch.tensor(h0, dtype=torch.float32),
                  torch.tensor(c0, dtype=torch.float32))
    ref, h_ref, c_ref = lstm_ref(params(m), x, cont, h=h0[0], c=c0[0])
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hT.detach().numpy()[0], h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cT.detach().numpy()[0], c_ref, rtol=1e-5, atol=1e-6)
    # Without expose_hidden Caffe starts each forward from the previous forward's final state.
    m2 = build("LSTM", x.shape, cont.shape)
    m2.load_state_dict(m.state_dict())
    first = m2(torch.tensor(x), torch.tensor(cont))
    second = m2(torch.tensor(x), torch.tensor(cont))
    r1, h1, c1 = lstm_ref(params(m), x, cont)
    r2, _, _ = lstm_ref(params(m), x, cont, h=h1, c=c1)
    np.testing.assert_allclose(first.detach().numpy(), r1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second.detach().numpy(), r2, rtol=1e-5, atol=1e-6)


def test_rnn_closed_form():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(T, N, D)).astype(np.float32)
    cont = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1]], np.float32)
    m = build("RNN", x.shape, cont.shape)
    p = params(m)
    h, out = np.zeros((N, H)), []
    for t in range(T):
        h = np.tanh((cont[t][:, None] * h) @ p["W_hh"].T + x[t] @ p["W_xh"].T + p["b_h"])
        out.append(np.tanh(h @ p["W_ho"].T + p["b_o"]))
    np.testing.assert_allclose(m(torch.tensor(x), torch.tensor(cont)).detach().numpy(), np.stack(out),
                               rtol=1e-5, atol=1e-6)
    assert m.top_shapes([x.shape, cont.shape]) == [(T, N, H)]


def test_errors():
    with pytest.raises(LayerError, match=r"cont 'b1' must be T x N = \(4, 3\)"):
        build("LSTM", (T, N, D), (T, N, 1))
    with pytest.raises(LayerError, match="hidden state bottom 'b2' must be"):
        build("RNN", (T, N, D), (T, N), (N, H), expose=True)
    with pytest.raises(LayerError, match="takes bottoms"):
        build("LSTM", (T, N, D), (T, N), (N, 7), (N, 7))
