"""Building blocks shared by the zoo nets: VGG trunks, data layers, solvers."""
from typing import Dict, Optional, Sequence, Tuple

from ... import proto
from ...data.transform import FCN_MEAN
from ..dsl import layers as L, params as P

#: FCN's learning-rate/decay multipliers for a convolution's weights and bias.
CONV_PARAM = (dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0))
#: A frozen blob (the bilinear deconvolutions and the Scale layers of the skips).
FROZEN = (dict(lr_mult=0),)

#: PASCAL VOC / ILSVRC mean, BGR, as in FCN's voc_layers param_str.
VOC_MEAN = FCN_MEAN

#: Convolutions per stage of the VGG trunks (the `D` and `E` configurations).
VGG_STAGES: Dict[str, Tuple[int, ...]] = {
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
VGG_WIDTHS = (64, 128, 256, 512, 512)


def conv_relu(bottom, nout, ks=3, stride=1, pad=1, **kwargs):
    """Convolution + in-place ReLU, FCN style (``param`` 1/1, 2/0, explicit stride)."""
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                         param=list(CONV_PARAM), **kwargs)
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def score(bottom, nout):
    """A 1×1 class-score convolution (no stride field, as FCN's ``score_*`` layers)."""
    return L.Convolution(bottom, num_output=nout, kernel_size=1, pad=0, param=list(CONV_PARAM))


def upsample(bottom, nout, ks, stride):
    """A frozen, bias-free, full (group 1) deconvolution; ``netspec.authoring.surgery.interp`` fills it."""
    return L.Deconvolution(bottom, convolution_param=dict(num_output=nout, kernel_size=ks,
                                                          stride=stride, bias_term=False),
                           param=list(FROZEN))


def vgg_trunk(n, data, arch="vgg16", first_pad=100, *, suffix="",
              rename: Optional[Dict[str, str]] = None):
    """conv1_1 … pool5 of VGG16/VGG19 into NetSpec ``n`` (conv1_1 padded by 100 as in FCN).

    Every name gets ``suffix`` (``conv1_1color``: one stream of NYUDv2 color-hha); ``rename`` maps
    a name to another before that (NYUDv2 color-d's 4-channel ``conv1_1`` is ``conv1_1_bgrd``)."""
    rename = rename or {}

    def name(base):
        return rename.get(base, base) + suffix

    bottom = data
    for stage, (count, width) in enumerate(zip(VGG_STAGES[arch], VGG_WIDTHS), start=1):
        for i in range(1, count + 1):
            pad = first_pad if (stage, i) == (1, 1) else 1
            conv, relu = name(f"conv{stage}_{i}"), name(f"relu{stage}_{i}")
            n[conv], n[relu] = conv_relu(bottom, width, pad=pad)
            bottom = n[relu]
        n[name(f"pool{stage}")] = max_pool(bottom)
        bottom = n[name(f"pool{stage}")]
    return bottom


def python_data(module: str, layer: str, param_str: str, ntop: int = 2):
    """A Python data layer (``param_str`` written as upstream writes it: a Python dict literal)."""
    return L.Python(module=module, layer=layer, param_str=param_str, ntop=ntop)


def deploy_input(shape: Sequence[int]):
    """The deploy nets' ``Input`` layer, named ``input`` as in voc-fcn8s/deploy.prototxt."""
    return L.Input(name="input", input_param=dict(shape=dict(dim=list(shape))))


def softmax_loss(score_top, label, normalize: Optional[bool] = False, normalization=None):
    """SoftmaxWithLoss with FCN's ``ignore_label: 255`` and ``normalize: false`` by default."""
    loss_param = dict(ignore_label=255)
    if normalization is not None:
        loss_param["normalization"] = normalization
    elif normalize is not None:
        loss_param["normalize"] = normalize
    return L.SoftmaxWithLoss(score_top, label, loss_param=loss_param)


def solver(name: str, *, base_lr, lr_policy="fixed", momentum=0.99, weight_decay=0.0005,
           iter_size=1, max_iter=100000, snapshot: Optional[int] = 4000, test_iter=736,
           test_interval=999999999, display=20, average_loss=20, test_initialization=False,
           snapshot_name="train", **extra):
    """A SolverParameter with FCN's published defaults; paths relative to the repository root."""
    sp = proto.pb2().SolverParameter()
    sp.train_net = f"prototxt/{name}/train.prototxt"
    sp.test_net.append(f"prototxt/{name}/val.prototxt")
    sp.test_iter.append(test_iter)
    sp.test_interval = test_interval
    sp.test_initialization = test_initialization
    sp.display = display
    sp.average_loss = average_loss
    sp.lr_policy = lr_policy
    sp.base_lr = base_lr
    if momentum is not None:
        sp.momentum = momentum
    sp.weight_decay = weight_decay
    sp.iter_size = iter_size
    sp.max_iter = max_iter
    if snapshot:
        sp.snapshot = snapshot
    sp.snapshot_prefix = f"snapshots/{name}/{snapshot_name}"
    for key, value in extra.items():
        field = getattr(sp, key)
        if isinstance(value, (list, tuple)):
            field.extend(value)
        else:
            setattr(sp, key, value)
    return sp


# -- BatchNorm nets and the IDD models (U-Net, DeepLabv3) ----------------------------------------------

#: BatchNorm's three blobs (mean, variance, scale factor) are statistics, never learned.
BN_PARAM = (dict(lr_mult=0, decay_mult=0),) * 3
#: A blob that neither learns nor decays (a frozen trunk, Caffe-era DeepLab's frozen Scale layers).
FIXED = dict(lr_mult=0, decay_mult=0)
#: A bias-free convolution's one weight blob.
WEIGHT = dict(lr_mult=1, decay_mult=1)

#: Where ``tools/build_seg_lmdb.py idd IDD_Segmentation data/idd/train`` writes the training split's class
#: weights ``w_c = 1 - n_c / sum(n)``; the IDD nets' loss takes them from here when the zoo is generated with
#: ``tools/make_zoo.py --class-weights-from-data``.
IDD_CLASS_WEIGHTS = "data/idd/train/class_weights.txt"
#: Set by ``make_zoo.py --class-weights-from-data``. Off, the generated nets carry weights of 1 whatever is
#: on disk, so that generating the zoo never depends on local data (the committed files are reproducible).
CLASS_WEIGHTS_FROM_DATA = False


def batch_norm(bottom, use_global_stats: Optional[bool] = None):
    """In-place BatchNorm (statistics blobs lr_mult 0). ``use_global_stats`` unset: batch statistics in
    TRAIN, the accumulated ones in TEST (Caffe's default); ``True`` freezes them (a pretrained trunk)."""
    extra = {} if use_global_stats is None else dict(batch_norm_param=dict(use_global_stats=use_global_stats))
    return L.BatchNorm(bottom, in_place=True, param=list(BN_PARAM), **extra)


def scale_bias(bottom, param=None):
    """In-place Scale with a bias (BatchNorm's affine part, as Caffe nets write it)."""
    extra = {} if param is None else dict(param=list(param))
    return L.Scale(bottom, in_place=True, scale_param=dict(bias_term=True), **extra)


def seg_data(source: str, **fields):
    """``netspec.data.seg.SegDataLayer`` reading the LMDB pair ``source`` (tops data, label); ``fields`` are
    further param_str keys, written in the given order."""
    body = ", ".join(f"{k!r}: {v!r}" for k, v in dict(source=source, **fields).items())
    return python_data("netspec.data.seg", "SegDataLayer", "{" + body + "}")


def seg_split_inputs(n, split: str, source: str, deploy_shape: Sequence[int], train_fields: dict):
    """Set ``n.data`` (and ``n.label``) of a SegDataLayer net's split: the deploy ``Input`` of ``deploy_shape``,
    ``source``/train with the augmentation ``train_fields``, or ``source``/``split`` read plainly."""
    if split == "deploy":
        n.data = deploy_input(deploy_shape)
    elif split == "train":
        n.data, n.label = seg_data(f"{source}/train", **train_fields)
    else:
        n.data, n.label = seg_data(f"{source}/{split}", seed=1337)


def read_class_weights(path: Optional[str], num_classes: int) -> Tuple[float, ...]:
    """The class weights in ``path`` (one per line, as the packers write ``class_weights.txt``; relative
    paths are taken from the repository root), or ``num_classes`` ones -- the unweighted loss -- when the
    file does not exist. ``path`` None: ``IDD_CLASS_WEIGHTS`` under ``CLASS_WEIGHTS_FROM_DATA``, else ones."""
    import os
    if path is None:
        if not CLASS_WEIGHTS_FROM_DATA:
            return (1.0,) * num_classes
        path = IDD_CLASS_WEIGHTS
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    full = path if os.path.isabs(path) else os.path.join(root, path)
    if not os.path.isfile(full):
        return (1.0,) * num_classes
    with open(full, encoding="utf-8") as f:
        values = [line.split("#", 1)[0].strip() for line in f]
    try:
        weights = tuple(float(v) for v in values if v)
    except ValueError as e:
        raise ValueError(f"{full}: not a class weight per line ({e})") from None
    if len(weights) != num_classes:
        raise ValueError(f"{full}: {len(weights)} class weights for {num_classes} classes; repack the "
                         "training split with tools/build_seg_lmdb.py")
    return weights


def weighted_softmax_loss(score_top, label, class_weight: Sequence[float]):
    """SoftmaxWithLoss over valid pixels (ignore_label 255), each pixel weighted by its class's weight
    (``loss_param.class_weight``, a netspec extension: the sum is divided by the summed weights of the valid
    pixels)."""
    return L.SoftmaxWithLoss(score_top, label, loss_param=dict(
        ignore_label=255, normalization="VALID", class_weight=list(class_weight)))
