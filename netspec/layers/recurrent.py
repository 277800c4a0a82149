"""RNN and LSTM as Caffe's RecurrentLayer: the unrolled net's maths written directly, with Caffe's blob
layout (W_xc, b_c, [W_xc_static], W_hc for LSTM; W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o for RNN) and
the LSTM gate order (i, f, o, g) inside the 4*H gate rows.
"""
import math

import torch
from torch import nn

from .fillers import fill_
from ..registry import Export, register
from .base import fail, shape_str


class Recurrent(nn.Module):
    """Bottoms x (T x N x ...), cont (T x N), [x_static (N x ...)], [h_0 (, c_0) (1 x N x H) if exposed].

    Without expose_hidden the initial state is the previous forward's final state (zeros at first), as
    Caffe copies h_T (and c_T) into h_0 (c_0) before every forward; cont_1 = 0 discards it.
    """

    def __init__(self, lstm: bool, H: int, D: int, Ds, expose: bool):
        super().__init__()
        self.lstm, self.H, self.expose, self.static = lstm, H, expose, Ds is not None
        G = 4 * H if lstm else H
        names = (["W_xc", "b_c", "W_xc_static", "W_hc"] if lstm else
                 ["W_xh", "b_h", "W_xh_static", "W_hh", "W_ho", "b_o"])
        shapes = [(G, D), (G,), (G, Ds), (G, H), (H, H), (H,)]
        self.names = [n for n in names if self.static or not n.endswith("_static")]
        for n, s in zip(names, shapes):
            if n in self.names:
                self.register_parameter(n, nn.Parameter(torch.empty(s)))
        self.register_buffer("carry", None, persistent=False)  # (1 or 2, N, H): last forward's final state

    def top_shapes(self, bottom_shapes):
        T, N = bottom_shapes[0][:2]
        return [(T, N, self.H)] + [(1, N, self.H)] * ((2 if self.lstm else 1) if self.expose else 0)

    def forward(self, x, cont, *rest):
        T, N = x.shape[:2]
        k = 2 if self.lstm else 1
        static = rest[0] if self.static else None
        p = dict(self.named_parameters())
        if self.expose:
            state = [s.reshape(N, self.H) for s in rest[self.static:]]
        elif self.carry is not None and self.carry.shape[1] == N:
            state = list(self.carry.to(x.dtype))
        else:
            state = [x.new_zeros(N, self.H)] * k
        cont = cont.detach().reshape(T, N, 1).to(x.dtype)  # no gradient to the sequence indicators
        w = self.names[0]
        xw = x.reshape(T, N, -1) @ p[w].t() + p[self.names[1]]  # (T, N, G)
        if static is not None:
            xw = xw + static.reshape(N, -1) @ p[w + "_static"].t()
        W_h = p["W_hc" if self.lstm else "W_hh"].t()
        h, c = state[0], state[-1]
        outs = []
        for t in range(T):
            g = (cont[t] * h) @ W_h + xw[t]
            if self.lstm:
                i, f, o, gg = g.split(self.H, dim=1)
                c = cont[t] * torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            else:
                h = torch.tanh(g)
                outs.append(torch.tanh(h @ p["W_ho"].t() + p["b_o"]))
        final = [h, c] if self.lstm else [h]
        if not self.expose:
            self.carry = torch.stack(final).detach()
            return torch.stack(outs)
        return (torch.stack(outs),) + tuple(s[None] for s in final)


def _build(lp, bottom_shapes, ctx, lstm: bool):
    p = lp.recurrent_param
    H = p.num_output
    k = 2 if lstm else 1
    if H <= 0:
        raise fail(lp, ctx, "recurrent_param.num_output must be positive")
    x, cont = bottom_shapes[:2]
    n_state = k if p.expose_hidden else 0
    extra = len(bottom_shapes) - 2 - n_state
    if extra not in (0, 1) or len(lp.top) != 1 + n_state:
        want = "x, cont, [x_static]" + (", h_0, c_0" if lstm else ", h_0") * p.expose_hidden
        raise fail(lp, ctx, f"takes bottoms ({want}) and {1 + n_state} tops; got {len(bottom_shapes)} bottoms, "
                      f"{len(lp.top)} tops (expose_hidden {str(p.expose_hidden).lower()})")
    if len(x) < 2:
        raise fail(lp, ctx, f"x '{lp.bottom[0]}' {shape_str(x)} must have at least 2 axes (T timesteps, N streams, ...)")
    T, N = x[:2]
    if tuple(cont) != (T, N):
        raise fail(lp, ctx, f"cont '{lp.bottom[1]}' must be T x N = {shape_str((T, N))}, got {shape_str(cont)}")
    Ds = None
    if extra:
        s = bottom_shapes[2]
        if not s or s[0] != N:
            raise fail(lp, ctx, f"static input '{lp.bottom[2]}' {shape_str(s)} must be N x ... with N = {N}")
        Ds = math.prod(s[1:])
    for b, s in zip(lp.bottom[2 + extra:], bottom_shapes[2 + extra:]):
        if tuple(s) != (1, N, H):
            raise fail(lp, ctx, f"hidden state bottom '{b}' must be {shape_str((1, N, H))}, got {shape_str(s)}")
    m = Recurrent(lstm, H, math.prod(x[2:]), Ds, p.expose_hidden)
    for n, t in m.named_parameters():
        fill_(t, p.bias_filler if n.startswith("b_") else p.weight_filler)
    return m


@register("LSTM", bottoms=(2, 5), tops=(1, 3),
          export=Export(refuse='keeps recurrent state between calls, which the exported graph cannot carry'),
          example=('layer { name: "in" type: "Input" top: "x" top: "cont" input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } } }\n'
'layer { name: "l" type: "LSTM" bottom: "x" bottom: "cont" top: "y" recurrent_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } propagate_down: true propagate_down: false }'))
def build_lstm(lp, bottom_shapes, ctx):
    """LSTM (recurrent_param num_output H, weight_filler, bias_filler, expose_hidden). Per step t:
    [i', f', o', g'] = W_hc (cont_t * h_{t-1}) + W_xc x_t + b_c (+ W_xc_static x_static);
    c_t = cont_t * sigmoid(f') * c_{t-1} + sigmoid(i') * tanh(g'); h_t = sigmoid(o') * tanh(c_t).
    Top h (T x N x H); with expose_hidden also bottoms h_0, c_0 and tops h_T, c_T (1 x N x H)."""
    return _build(lp, bottom_shapes, ctx, lstm=True)


@register("RNN", bottoms=(2, 4), tops=(1, 2),
          export=Export(refuse='keeps recurrent state between calls, which the exported graph cannot carry'),
          example=('layer { name: "in" type: "Input" top: "x" top: "cont" input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } } }\n'
'layer { name: "l" type: "RNN" bottom: "x" bottom: "cont" top: "y" recurrent_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } propagate_down: true propagate_down: false }'))
def build_rnn(lp, bottom_shapes, ctx):
    """RNN (recurrent_param as LSTM): h_t = tanh(W_hh (cont_t * h_{t-1}) + W_xh x_t + b_h
    (+ W_xh_static x_static)); o_t = tanh(W_ho h_t + b_o). Top o (T x N x H); with expose_hidden also
    bottom h_0 and top h_T."""
    return _build(lp, bottom_shapes, ctx, lstm=False)
