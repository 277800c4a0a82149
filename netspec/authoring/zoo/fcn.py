"""FCN-32s/16s/8s and FCN-8s at-once on VGG16/VGG19 (Long, Shelhamer, Darrell), as NetSpec code.

The nets are layer for layer those of fcn.berkeleyvision.org's ``net.py`` files (same layer and
blob names, parameters and order; the Crop offsets are computed by :func:`netspec.authoring.coord_map.crop`
rather than written down), so the generated ``voc-fcn*`` train/val nets equal upstream's but for
the data paths, and the FCN-8s deploy net equals ``voc-fcn8s/deploy.prototxt`` (no Dropout, an
``Input`` layer named ``input`` of 1×3×500×500).

NYUDv2 takes color with depth or HHA in two ways (Gupta et al.'s encodings, FCN paper §5): early
fusion (``fcn(..., concat=("color", "depth"))``: a 4-channel ``data`` Concat into one trunk whose
first convolution is ``conv1_1_bgrd``) and late fusion (:func:`fcn_late_fusion`: one whole VGG
stream per input, every layer name suffixed with its input, the streams' ``score_fr`` averaged).
"""
from typing import NamedTuple, Optional, Sequence, Tuple, Union

from ..coord_map import crop
from ..dsl import NetSpec, layers as L, params as P
from .common import conv_relu, deploy_input, python_data, score, softmax_loss, upsample, vgg_trunk


class PyData(NamedTuple):
    """A train/val net's Python data layer and the blobs it makes."""
    module: str
    layer: str
    param_str: str
    tops: Tuple[str, ...] = ("data", "label")


class InputData(NamedTuple):
    """A deploy net's ``Input`` layer: top ``data`` of ``shape``, or one top per name in ``tops``
    of ``shape`` with that top's entry of ``channels``."""
    shape: Tuple[int, ...] = (1, 3, 500, 500)
    tops: Tuple[str, ...] = ("data",)
    channels: Optional[Tuple[int, ...]] = None


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
        if data.tops == ("data",):
            n.data = deploy_input(data.shape)
            return True
        batch, _, *hw = data.shape
        shapes = [dict(dim=[batch, c, *hw]) for c in data.channels]
        tops = L.Input(name="input", ntop=len(data.tops), input_param=dict(shape=shapes))
        for name, top in zip(data.tops, tops if isinstance(tops, tuple) else (tops,)):
            n[name] = top
        return True
    tops = python_data(data.module, data.layer, data.param_str, ntop=len(data.tops))
    tops = tops if isinstance(tops, tuple) else (tops,)
    for name, top in zip(data.tops, tops):
        n[name] = top
    return False


def fc_layers(n: NetSpec, bottom, *, fc6_kernel=7, fc6_dilation=1, dropout_ratio=0.5,
              dropout=True, suffix=""):
    """fc6 (as a convolution), relu6, drop6, fc7, relu7, drop7 (names + ``suffix``); returns the
    last top."""
    s = suffix
    extra = dict(dilation=fc6_dilation) if fc6_dilation != 1 else {}
    n[f"fc6{s}"], n[f"relu6{s}"] = conv_relu(bottom, 4096, ks=fc6_kernel, pad=0, **extra)
    top = n[f"relu6{s}"]
    if dropout:
        n[f"drop6{s}"] = L.Dropout(top, dropout_ratio=dropout_ratio, in_place=True)
        top = n[f"drop6{s}"]
    n[f"fc7{s}"], n[f"relu7{s}"] = conv_relu(top, 4096, ks=1, pad=0)
    top = n[f"relu7{s}"]
    if dropout:
        n[f"drop7{s}"] = L.Dropout(top, dropout_ratio=dropout_ratio, in_place=True)
        top = n[f"drop7{s}"]
    return top


def fuse_skip(n: NetSpec, pool: str, up, s: str, k: int, atonce_scale: Optional[float]):
    """One FCN skip: ``pool`` (first scaled by the constant ``atonce_scale``, lr_mult 0, in the at-once net) is
    scored, cropped to ``up`` and added to it; returns the top ``fuse_<pool><s>``."""
    bottom = n[pool]
    if atonce_scale is not None:
        n[f"scale_{pool}"] = L.Scale(bottom, filler=dict(type="constant", value=atonce_scale),
                                     param=[dict(lr_mult=0)])
        bottom = n[f"scale_{pool}"]
    n[f"score_{pool}{s}"] = score(bottom, k)
    n[f"score_{pool}{s}c"] = crop(n[f"score_{pool}{s}"], up)
    n[f"fuse_{pool}{s}"] = L.Eltwise(up, n[f"score_{pool}{s}c"], operation=P.Eltwise.SUM)
    return n[f"fuse_{pool}{s}"]


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
        fuse_pool4 = fuse_skip(n, "pool4", n[f"upscore2{s}"], s, k, 0.01 if atonce else None)
        if stride == 16:
            n[f"upscore16{s}"] = upsample(fuse_pool4, k, 32, 16)
            last = n[f"upscore16{s}"]
        elif stride == 8:
            n[f"upscore_pool4{s}"] = upsample(fuse_pool4, k, 4, 2)
            fuse_pool3 = fuse_skip(n, "pool3", n[f"upscore_pool4{s}"], s, k, 0.0001 if atonce else None)
            n[f"upscore8{s}"] = upsample(fuse_pool3, k, 16, 8)
            last = n[f"upscore8{s}"]
        else:
            raise ValueError(f"FCN stride must be 32, 16 or 8, not {stride}")
    n[f"score{s}"] = crop(last, n.data)
    if loss:
        n[head.loss] = softmax_loss(n[f"score{s}"], n[head.label], normalize=normalize)
    return n[f"score{s}"]


def fcn(stride: int, data: Data, heads: Sequence[Head], *, arch="vgg16", atonce=False,
        dropout_ratio=0.5, normalize: Optional[bool] = False, concat: Sequence[str] = ()):
    """An FCN net: VGG trunk (conv1_1 pad 100), fc6/fc7 as convolutions, one or more heads.

    Deploy nets (``InputData``) have no Dropout and no loss, as voc-fcn8s/deploy.prototxt.
    ``concat`` (early fusion): the data layer's tops of these names are concatenated on channels
    into ``data``, and the first convolution, whose input is no longer BGR, is ``conv1_1_bgrd`` (so
    a VGG transplant leaves it to be learned; upstream's name).
    """
    n = NetSpec()
    deploy = add_data(n, data)
    rename = {}
    if concat:
        n.data = L.Concat(*(n[t] for t in concat))
        rename = {"conv1_1": "conv1_1_bgrd"}
    pool5 = vgg_trunk(n, n.data, arch, rename=rename)
    fc7 = fc_layers(n, pool5, dropout_ratio=dropout_ratio, dropout=not deploy)
    for head in heads:
        fcn_head(n, fc7, stride, head, atonce=atonce, loss=not deploy, normalize=normalize)
    return n.to_proto()


def fcn_late_fusion(data: Data, streams: Sequence[str], head: Head, *, arch="vgg16",
                    normalize: Optional[bool] = False):
    """FCN-32s late fusion: one VGG stream and ``score_fr`` per input top in ``streams``, every
    layer name suffixed with its top (``conv1_1hha``), the scores averaged (Eltwise SUM with
    coefficients 1/len(streams)) into ``score_fused``, then FCN-32s' upscore and a Crop to the
    first stream's input (NYUDv2 color-hha, where the coefficients are 0.5)."""
    n = NetSpec()
    deploy = add_data(n, data)
    k = head.num_classes
    scores = []
    for s in streams:
        pool5 = vgg_trunk(n, n[s], arch, suffix=s)
        fc7 = fc_layers(n, pool5, dropout=not deploy, suffix=s)
        n[f"score_fr{s}"] = score(fc7, k)
        scores.append(n[f"score_fr{s}"])
    n.score_fused = L.Eltwise(*scores, operation=P.Eltwise.SUM,
                              coeff=[1 / len(streams)] * len(streams))
    n.upscore = upsample(n.score_fused, k, 64, 32)
    n.score = crop(n.upscore, n[streams[0]])
    if not deploy:
        n[head.loss] = softmax_loss(n.score, n[head.label], normalize=normalize)
    return n.to_proto()
