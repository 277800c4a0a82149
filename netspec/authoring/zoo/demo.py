"""``demo``: a small FCN that trains on CPU in minutes on 64×64 synthetic shapes (4 classes).

Trunk of 3×3 convolutions (16/32/64/64 channels, MSRA init) down to stride 8 (receptive field
about 46 pixels, enough to tell shapes apart), a stride-8 score, FCN-8s-style skips from pool2
and pool1, and three frozen 2× bilinear deconvolutions (``group`` = classes, where Caffe's
``bilinear`` filler is exact). As there is no 100-pixel input padding, each upsampled coarse
score is the *larger* blob and is cropped to the finer skip score, then the last one to the
input; all three offsets come from :func:`netspec.authoring.coord_map.crop`.
The loss is normalised over valid pixels, so ordinary learning rates (Adam 1e-3) apply.
"""
from ..coord_map import crop
from ..dsl import NetSpec, layers as L, params as P
from .common import CONV_PARAM, FROZEN, deploy_input, python_data, softmax_loss

NUM_CLASSES = 4
INPUT_SHAPE = (1, 3, 64, 64)
DATA_MODULE, DATA_LAYER = "netspec.data.seg", "SegDataLayer"
#: (stage, channels, convolutions); a 2×2 max pooling after every stage but the last.
TRUNK = ((1, 16, 1), (2, 32, 1), (3, 64, 2), (4, 64, 1))


def _conv(bottom, nout, ks=3, pad=1):
    return L.Convolution(bottom, num_output=nout, kernel_size=ks, pad=pad, param=list(CONV_PARAM),
                         weight_filler=dict(type="msra"), bias_filler=dict(type="constant"))


def _upsample(bottom, ks, stride):
    return L.Deconvolution(bottom, convolution_param=dict(
        num_output=NUM_CLASSES, kernel_size=ks, stride=stride, group=NUM_CLASSES,
        bias_term=False, weight_filler=dict(type="bilinear")), param=list(FROZEN))


def demo(split: str):
    """``split`` is ``train``, ``val`` or ``deploy``."""
    n = NetSpec()
    if split == "deploy":
        n.data = deploy_input(INPUT_SHAPE)
    else:
        n.data, n.label = python_data(DATA_MODULE, DATA_LAYER,
                                      f"{{'source': 'data/demo/{split}', 'seed': 1}}")
    bottom = n.data
    for stage, width, count in TRUNK:
        for i in range(1, count + 1):
            n[f"conv{stage}_{i}"] = _conv(bottom, width)
            n[f"relu{stage}_{i}"] = L.ReLU(n[f"conv{stage}_{i}"], in_place=True)
            bottom = n[f"relu{stage}_{i}"]
        if stage < len(TRUNK):
            n[f"pool{stage}"] = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2, stride=2)
            bottom = n[f"pool{stage}"]
    # stride 8 -> 4 -> 2 -> 1, fusing the pool2 and pool1 scores on the way (FCN-8s style).
    n.score_fr = _conv(bottom, NUM_CLASSES, ks=1, pad=0)
    n.upscore2 = _upsample(n.score_fr, 4, 2)
    n.score_pool2 = _conv(n.pool2, NUM_CLASSES, ks=1, pad=0)
    n.upscore2c = crop(n.upscore2, n.score_pool2)
    n.fuse_pool2 = L.Eltwise(n.upscore2c, n.score_pool2, operation=P.Eltwise.SUM)
    n.upscore_pool2 = _upsample(n.fuse_pool2, 4, 2)
    n.score_pool1 = _conv(n.pool1, NUM_CLASSES, ks=1, pad=0)
    n.upscore_pool2c = crop(n.upscore_pool2, n.score_pool1)
    n.fuse_pool1 = L.Eltwise(n.upscore_pool2c, n.score_pool1, operation=P.Eltwise.SUM)
    n.upscore_pool1 = _upsample(n.fuse_pool1, 4, 2)
    n.score = crop(n.upscore_pool1, n.data)
    if split != "deploy":
        n.loss = softmax_loss(n.score, n.label, normalize=None, normalization="VALID")
    return n.to_proto()


def pack_missing_data(solver_param, base_dir=None) -> bool:
    """Pack the synthetic demo set (:func:`netspec.data.synthetic.pack`) into ``data/demo`` when a net of
    ``solver_param`` reads ``data/demo/<split>`` with SegDataLayer and it is not there yet, as
    ``tools/train.py --solver solvers/demo.prototxt`` does on first use (the ranks of a torchrun all call it:
    one packs, the others wait). Net files are looked for as given, then relative to ``base_dir`` (the solver's
    folder); one that cannot be read is left to the solver to report. Returns whether it packed."""
    import os

    from ...data.synthetic import DEMO_ROOT, pack
    from ...errors import NetspecError
    from ...formats.prototxt import read_net
    from ...layers.python import parse_param_str
    p = solver_param
    nets = [getattr(p, f) for f in ("net_param", "train_net_param") if p.HasField(f)] + list(p.test_net_param)
    for path in [getattr(p, f) for f in ("net", "train_net") if p.HasField(f)] + list(p.test_net):
        for cand in (path, os.path.join(base_dir, path) if base_dir else None):
            if cand and os.path.isfile(cand):
                try:
                    nets.append(read_net(cand))
                except (NetspecError, OSError):
                    pass
                break
    for net in nets:
        for lp in net.layer:
            pp = lp.python_param
            if lp.type != "Python" or (pp.module, pp.layer) not in (
                    (DATA_MODULE, DATA_LAYER), ("netspec.layers.seg_lmdb", DATA_LAYER)):
                continue
            try:
                source = parse_param_str(pp.param_str).get("source")
            except (NetspecError, AttributeError):
                continue
            if (isinstance(source, str) and not os.path.isdir(source)
                    and os.path.normpath(os.path.dirname(source)) == os.path.normpath(DEMO_ROOT)):
                pack(DEMO_ROOT)
                return True
    return False
