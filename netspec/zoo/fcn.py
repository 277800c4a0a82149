"""FCN-32s/16s/8s and FCN-8s at-once on VGG16/VGG19 (Long, Shelhamer, Darrell), as NetSpec code.

The nets are layer for layer those of fcn.berkeleyvision.org's ``net.py`` files (same layer and
blob names, parameters and order; the Crop offsets are computed by :func:`netspec.coord_map.crop`
rather than written down), so the generated ``voc-fcn*`` train/val nets equal upstream's but for
the data paths, and the FCN-8s deploy net equals ``voc-fcn8s/deploy.prototxt`` (no Dropout, an
``Input`` layer named ``input`` of 1×3×500×500).
"""
from typing import NamedTuple, Optional, Sequence, Tuple, Union

from ..coord_map import crop
from ..dsl import NetSpec, layers as L, params as P
from .common import (conv_relu, deploy_input, python_data, score, softmax_loss, upsample,
                     vgg_trunk)


class PyData(NamedTuple):
    """A train/val net's Python data layer and the blobs it makes."""
    module: str
    layer: str
    param_str: str
    tops: Tuple[str, ...] = ("data", "label")


class InputData(NamedTuple):
    """A deploy net's ``Input`` layer (top ``data``)."""
    shape: Tuple[int, ...] = (1, 3, 500, 500)


class Head(NamedTuple):
    """One classifier head: its class count, the suffix of its layer names, label and loss."""
    num_classes: int
    suffix: str = ""
    label: str = "label"
    loss: str = "loss"


Data = Union[PyData, InputData]


def add_data(n: NetSpec, data: Data):
    """The net's data layer; returns whether it is a deploy net."""
    if isinstance(data, InputData):
        n.data = deploy_input(data.shape)
        return True
    tops = python_data(data.module, data.layer, data.param_str, ntop=len(data.tops))
    tops = tops if isinstance(tops, tuple) else (tops,)
    for name, top in zip(data.tops, tops):
        n[name] = top
    return False


def fc_layers(n: NetSpec, bottom, *, fc6_kernel=7, fc6_dilation=1, dropout_ratio=0.5,
              dropout=True):
    """fc6 (as a convolution), relu6, drop6, fc7, relu7, drop7; returns the last top."""
    extra = dict(dilation=fc6_dilation) if fc6_dilation != 1 else {}
    n.fc6, n.relu6 = conv_relu(bottom, 4096, ks=fc6_kernel, pad=0, **extra)
    top = n.relu6
    if dropout:
        n.drop6 = L.Dropout(n.relu6, dropout_ratio=dropout_ratio, in_place=True)
        top = n.drop6
    n.fc7, n.relu7 = conv_relu(top, 4096, ks=1, pad=0)
    top = n.relu7
    if dropout:
        n.drop7 = L.Dropout(n.relu7, dropout_ratio=dropout_ratio, in_place=True)
        top = n.drop7
    return top


def fcn_head(n: NetSpec, fc7, stride: int, head: Head, *, atonce=False, loss=True,
             normalize: Optional[bool] = False):
    """The FCN-{32,16,8}s scoring, upsampling and skip layers of one head, plus its loss."""
    s, k = head.suffix, head.num_classes
    n[f"score_fr{s}"] = score(fc7, k)
    if stride == 32:
        n[f"upscore{s}"] = upsample(n[f"score_fr{s}"], k, 64, 32)
        last = n[f"upscore{s}"]
    else:
        n[f"upscore2{s}"] = upsample(n[f"score_fr{s}"], k, 4, 2)
        skip_bottom = n.pool4
        if atonce:
            n.scale_pool4 = L.Scale(n.pool4, filler=dict(type="constant", value=0.01),
                                    param=[dict(lr_mult=0)])
            skip_bottom = n.scale_pool4
        n[f"score_pool4{s}"] = score(skip_bottom, k)
        n[f"score_pool4{s}c"] = crop(n[f"score_pool4{s}"], n[f"upscore2{s}"])
        n[f"fuse_pool4{s}"] = L.Eltwise(n[f"upscore2{s}"], n[f"score_pool4{s}c"],
                                        operation=P.Eltwise.SUM)
        if stride == 16:
            n[f"upscore16{s}"] = upsample(n[f"fuse_pool4{s}"], k, 32, 16)
            last = n[f"upscore16{s}"]
        elif stride == 8:
            n[f"upscore_pool4{s}"] = upsample(n[f"fuse_pool4{s}"], k, 4, 2)
            skip_bottom = n.pool3
            if atonce:
                n.scale_pool3 = L.Scale(n.pool3, filler=dict(type="constant", value=0.0001),
                                        param=[dict(lr_mult=0)])
                skip_bottom = n.scale_pool3
            n[f"score_pool3{s}"] = score(skip_bottom, k)
            n[f"score_pool3{s}c"] = crop(n[f"score_pool3{s}"], n[f"upscore_pool4{s}"])
            n[f"fuse_pool3{s}"] = L.Eltwise(n[f"upscore_pool4{s}"], n[f"score_pool3{s}c"],
                                            operation=P.Eltwise.SUM)
            n[f"upscore8{s}"] = upsample(n[f"fuse_pool3{s}"], k, 16, 8)
            last = n[f"upscore8{s}"]
        else:
            raise ValueError(f"FCN stride must be 32, 16 or 8, not {stride}")
    n[f"score{s}"] = crop(last, n.data)
    if loss:
        n[head.loss] = softmax_loss(n[f"score{s}"], n[head.label], normalize=normalize)
    return n[f"score{s}"]


def fcn(stride: int, data: Data, heads: Sequence[Head], *, arch="vgg16", atonce=False,
        dropout_ratio=0.5, normalize: Optional[bool] = False):
    """An FCN net: VGG trunk (conv1_1 pad 100), fc6/fc7 as convolutions, one or more heads.

    Deploy nets (``InputData``) have no Dropout and no loss, as voc-fcn8s/deploy.prototxt.
    """
    n = NetSpec()
    deploy = add_data(n, data)
    pool5 = vgg_trunk(n, n.data, arch)
    fc7 = fc_layers(n, pool5, dropout_ratio=dropout_ratio, dropout=not deploy)
    for head in heads:
        fcn_head(n, fc7, stride, head, atonce=atonce, loss=not deploy, normalize=normalize)
    return n.to_proto()
