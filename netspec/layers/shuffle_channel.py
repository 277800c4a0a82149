"""ShuffleChannel: ShuffleNet's channel shuffle (``ShuffleChannelParameter``, a netspec schema extension at
the fork's own number 164).

Followed: farmingyard/ShuffleNet shuffle_channel_layer.cpp, ShuffleChannelLayer::Forward_cpu (Resize_cpu
with group_row = group, group_column = C / group) and Backward_cpu (the inverse permutation).
"""
from torch import nn

from ..registry import Export, register
from .base import example_net, fail


class ShuffleChannel(nn.Module):
    """top channel j * group + i = bottom channel i * (C / group) + j: view (N, group, C/group, ...), swap the
    two group axes, flatten back."""

    def __init__(self, group):
        super().__init__()
        self.group = group

    def forward(self, x):
        n, c = x.shape[:2]
        rest = x.shape[2:]
        return x.reshape(n, self.group, c // self.group, *rest).transpose(1, 2).reshape(x.shape)

    def extra_repr(self):
        return f"group={self.group}"


@register("ShuffleChannel", reshape_like=True, bottoms=1, tops=1,
          pure=True, coord="identity",
          export=Export(),
          example=example_net("ShuffleChannel", "shuffle_channel_param { group: 2 }"))
def shuffle_channel(lp, bottom_shapes, ctx):
    """ShuffleChannel: shuffle_channel_param group (1, must divide the channel count)."""
    g = lp.shuffle_channel_param.group
    shape = tuple(bottom_shapes[0])
    if g <= 0:
        raise fail(lp, ctx, f"group must be greater than 0, got {g}")
    if len(shape) < 2 or shape[1] % g:
        raise fail(lp, ctx, f"group {g} must divide the channel count of the bottom {shape}")
    return ShuffleChannel(g)
