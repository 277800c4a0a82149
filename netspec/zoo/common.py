"""Building blocks shared by the zoo nets: VGG trunks, data layers, solvers."""
from typing import Dict, Optional, Sequence, Tuple

from .. import proto
from ..dsl import layers as L, params as P

#: FCN's learning-rate/decay multipliers for a convolution's weights and bias.
CONV_PARAM = (dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0))
#: A frozen blob (the bilinear deconvolutions and the Scale layers of the skips).
FROZEN = (dict(lr_mult=0),)

#: PASCAL VOC / ILSVRC mean, BGR, as in FCN's voc_layers param_str.
VOC_MEAN = (104.00699, 116.66877, 122.67892)

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
    """A frozen, bias-free, full (group 1) deconvolution; ``netspec.surgery.interp`` fills it."""
    return L.Deconvolution(bottom, convolution_param=dict(num_output=nout, kernel_size=ks,
                                                          stride=stride, bias_term=False),
                           param=list(FROZEN))


def vgg_trunk(n, data, arch="vgg16", first_pad=100):
    """conv1_1 … pool5 of VGG16/VGG19 into NetSpec ``n`` (conv1_1 padded by 100 as in FCN)."""
    bottom = data
    for stage, (count, width) in enumerate(zip(VGG_STAGES[arch], VGG_WIDTHS), start=1):
        for i in range(1, count + 1):
            pad = first_pad if (stage, i) == (1, 1) else 1
            n[f"conv{stage}_{i}"], n[f"relu{stage}_{i}"] = conv_relu(bottom, width, pad=pad)
            bottom = n[f"relu{stage}_{i}"]
        n[f"pool{stage}"] = max_pool(bottom)
        bottom = n[f"pool{stage}"]
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
