"""InnerProduct and Embed (Caffe ``InnerProductParameter``, ``EmbedParameter``)."""
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LayerError
from .fillers import fill_
from ..registry import register
from .base import canonical_axis, example_net, fail


class InnerProduct(nn.Module):
    """y = x' W^T + b with x' = x flattened from ``axis`` on; W is (num_output, K), or (K, num_output) if transposed."""

    def __init__(self, k, num_output, bias, axis, transpose):
        super().__init__()
        self.weight = nn.Parameter(torch.empty((k, num_output) if transpose else (num_output, k)))
        self.bias = nn.Parameter(torch.empty(num_output)) if bias else None
        self.axis, self.transpose = axis, transpose

    def top_shapes(self, bottom_shapes):
        n = self.weight.shape[1 if self.transpose else 0]
        return [tuple(bottom_shapes[0][:self.axis]) + (n,)]

    def forward(self, x):
        x = x.flatten(self.axis)  # (*x.shape[:axis], K)
        return F.linear(x, self.weight.t() if self.transpose else self.weight, self.bias)

    def extra_repr(self):
        return f"weight={tuple(self.weight.shape)}, bias={self.bias is not None}, axis={self.axis}, " \
               f"transpose={self.transpose}"


@register("InnerProduct", bottoms=1, tops=1, detail=lambda lp: f"{lp.inner_product_param.num_output}",
          pure=True,
          blobs=('weight', 'bias'),
          colour="#CC33FF",
          example=example_net("InnerProduct", "inner_product_param { num_output: 3 weight_filler { type: 'gaussian' } }"))
def inner_product(lp, bottom_shapes, ctx):
    """InnerProduct: inner_product_param num_output, bias_term, axis, transpose, weight_filler, bias_filler
    (absent = constant 0). K = product of the bottom axes from ``axis`` on; top = bottom.shape[:axis] + (num_output,).
    """
    p = lp.inner_product_param
    shape = tuple(bottom_shapes[0])
    axis = canonical_axis(lp, ctx, p.axis, len(shape))
    if p.num_output <= 0:
        raise fail(lp, ctx, f"num_output must be positive, got {p.num_output}")
    k = 1
    for d in shape[axis:]:
        k *= d
    m = InnerProduct(k, p.num_output, p.bias_term, axis, p.transpose)
    fill_(m.weight, p.weight_filler)
    if m.bias is not None:
        fill_(m.bias, p.bias_filler)
    return m


#: embed_layer.cpp Backward_cpu: CHECK(!propagate_down[0]) << "Can't backpropagate to EmbedLayer input."
EMBED_NO_BACKWARD = ("Caffe's Embed cannot back-propagate to its index input, bottom 0 (embed_layer.cpp: "
                     "\"Can't backpropagate to EmbedLayer input.\")")


class _NoBackwardInto(torch.autograd.Function):
    """Identity on ``y``; back-propagating through it into ``x`` raises ``message`` (a Caffe layer whose
    Backward CHECKs that one of its bottoms gets no gradient)."""

    @staticmethod
    def forward(ctx, y, x, message):
        ctx.message = message
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        if ctx.needs_input_grad[1]:
            raise LayerError(ctx.message)
        return grad, None, None


def no_backward_into(y, x, message):
    """``y``, such that a backward pass that would reach ``x`` raises LayerError(message), as Caffe fails in
    Backward; nothing changes when ``x`` needs no gradient."""
    return _NoBackwardInto.apply(y, x, message) if x.requires_grad and torch.is_grad_enabled() else y


class Embed(nn.Module):
    """y = W[int(x)] + b: a lookup of rows of W (input_dim, num_output); x holds indices as floats."""

    ident = "layer (Embed)"

    def __init__(self, input_dim, num_output, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(input_dim, num_output))
        self.bias = nn.Parameter(torch.empty(num_output)) if bias else None

    def forward(self, x):
        # Caffe casts with static_cast<int> (toward zero), as .long(); the index input gets no gradient.
        y = F.embedding(x.detach().long(), self.weight)  # (*x.shape, num_output)
        y = y + self.bias if self.bias is not None else y
        return no_backward_into(y, x, f"{self.ident}: {EMBED_NO_BACKWARD}; remove force_backward: true (Caffe "
                                      "fails with it even where propagate_down: false is given)")

    def extra_repr(self):
        return f"weight={tuple(self.weight.shape)}, bias={self.bias is not None}"


@register("Embed", bottoms=1, tops=1,
          blobs=('weight', 'bias'),
          example=('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
'layer { name: "e" type: "Embed" bottom: "x" top: "y" embed_param { num_output: 3 input_dim: 1 weight_filler { type: "gaussian" } } }'),
          backward=False)
def embed(lp, bottom_shapes, ctx):
    """Embed: embed_param input_dim, num_output, bias_term, weight_filler, bias_filler (absent = constant 0).

    top = bottom.shape + (num_output,). Caffe cannot back-propagate to the index bottom; neither does this.
    """
    p = lp.embed_param
    if lp.propagate_down and lp.propagate_down[0]:
        raise fail(lp, ctx, f"{EMBED_NO_BACKWARD}; set propagate_down: false for bottom '{lp.bottom[0]}' or leave "
                            "propagate_down out")
    if p.input_dim <= 0 or p.num_output <= 0:
        raise fail(lp, ctx, f"input_dim and num_output must be positive, got {p.input_dim} and {p.num_output}")
    m = Embed(p.input_dim, p.num_output, p.bias_term)
    m.ident = f"{getattr(ctx, 'where', '') or ''}layer '{lp.name}' (Embed)"
    fill_(m.weight, p.weight_filler)
    if m.bias is not None:
        fill_(m.bias, p.bias_filler)
    return m
