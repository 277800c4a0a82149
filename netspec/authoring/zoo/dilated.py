"""Dilated FCN-2s (Mahmud Sharif Amit et al., SharifAmit/DilatedFCNSegmentation), as NetSpec code.

VGG16/VGG19 trunk (conv1_1 pad 100), fc6 a 3×3 convolution of dilation 3 (the extent of FCN's
7×7 fc6 with 9 instead of 49 taps per input channel), fc7, score_fr, then five stride-2 kernel-4
deconvolutions, four of them fused with Scale-weighted skips from pool4 … pool1 (scales 1e-2,
1e-4, 1e-6, 1e-8, frozen) and a final Crop to the input. Layer names are upstream's, including
the duplicate names: every skip Crop is a layer named ``Cropping`` and every fusion ``fuse``
(Caffe and netspec accept duplicate layer names; none of those layers has parameters).
The Crop offsets (5, 9, 17, 33, 34) are computed by :func:`netspec.authoring.coord_map.crop`.

Deploy nets keep drop6/drop7 as upstream's deploy.prototxt files do (identity in TEST).
"""
from ..coord_map import crop
from ..dsl import NetSpec, layers as L, params as P
from .common import score, softmax_loss, upsample, vgg_trunk
from .fcn import Data, add_data, fc_layers

#: (pool, scale of its skip) from the coarsest skip to the finest.
SKIPS = (("pool4", 0.01), ("pool3", 0.0001), ("pool2", 1e-06), ("pool1", 1e-08))


def fcn2s_dilated(data: Data, num_classes=21, *, arch="vgg16", normalize=False):
    n = NetSpec()
    deploy = add_data(n, data)
    pool5 = vgg_trunk(n, n.data, arch)
    fc7 = fc_layers(n, pool5, fc6_kernel=3, fc6_dilation=3)
    n.score_fr = score(fc7, num_classes)
    n.upscore2 = upsample(n.score_fr, num_classes, 4, 2)
    up = n.upscore2
    for pool, scale in SKIPS:
        n[f"scale_{pool}"] = L.Scale(n[pool], filler=dict(type="constant", value=scale),
                                     param=[dict(lr_mult=0)])
        n[f"score_{pool}"] = score(n[f"scale_{pool}"], num_classes)
        n[f"score_{pool}c"] = crop(n[f"score_{pool}"], up, name="Cropping")
        n[f"fuse_{pool}"] = L.Eltwise(up, n[f"score_{pool}c"], operation=P.Eltwise.SUM,
                                      name="fuse")
        name = "upscore_2" if pool == "pool1" else f"upscore_{pool}"
        n[name] = upsample(n[f"fuse_{pool}"], num_classes, 4, 2)
        up = n[name]
    n.score = crop(up, n.data, name="Cropping")
    if not deploy:
        n.loss = softmax_loss(n.score, n.label, normalize=normalize)
    return n.to_proto()
