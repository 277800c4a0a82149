"""The attention FCN (netspec/authoring/zoo/attention.py): builds at any input size, and its parts compute
what the module docstring says (SE as Caffe's Scale with axis 0, the ASPP image branch as a
broadcast Bias, exact bilinear deconvolutions, skip Crops aligned by coord_map)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import netspec
from netspec.authoring import surgery, zoo
from netspec.authoring.coord_map import CoordMapError, crop
from netspec.data import packers
from netspec.authoring.dsl import NetSpec, layers as L
from netspec.authoring.zoo import attention

MODELS = ("attention_fcn_cityscapes", "attention_fcn_voc")


def deploy(name, h, w):
    net = zoo.net(name, "deploy")
    dims = net.layer[0].input_param.shape[0].dim
    del dims[:]
    dims.extend([1, 3, h, w])
    return net


@pytest.mark.parametrize("name, classes", [("attention_fcn_cityscapes", 19),
                                           ("attention_fcn_voc", 21)])
@pytest.mark.parametrize("hw", [(97, 131), (375, 500), (1024, 2048), (1, 1), (2, 3)])
def test_builds_at_any_input_size_with_score_the_input_size(name, classes, hw):
    net = netspec.Net(deploy(name, *hw), netspec.TEST)
    assert net.blobs["score"].shape == (1, classes, *hw)
    assert net.outputs == ["score"]
    h, w = hw
    for k in range(1, 6):  # stage k runs at ceil(size / 2^(k-1)); its skip crop keeps that size
        size = (-(-h // 2 ** (k - 1)), -(-w // 2 ** (k - 1)))
        assert net.blobs[f"conv{k}_1"].shape[2:] == size
        assert net.blobs[f"se{k}"].shape[2:] == size
        assert net.blobs[f"up{k}_conv"].shape[2:] == tuple(2 * -(-s // 2) + 1 for s in size)


def test_crop_offsets_come_from_the_graph():
    crops = [(l.name, list(l.bottom), l.crop_param.axis, list(l.crop_param.offset))
             for l in zoo.net("attention_fcn_voc", "train").layer if l.type == "Crop"]
    assert crops == [(f"up{k}c", [f"up{k}_conv", f"skip{k}"], 2, [1]) for k in range(5, 0, -1)] + \
        [("score", ["classifier", "data"], 2, [0])]


def test_half_pixel_is_why_the_decoder_has_a_2x2_convolution():
    """A 3×3 stride-2 convolution centres output j on input 2j; the factor-2 bilinear
    deconvolution (kernel 4, stride 2, pad 1) puts input j at output 2j + 1/2: no integer Crop."""
    n = NetSpec()
    n.data = L.Input(input_param=dict(shape=dict(dim=[1, 3, 9, 9])))
    n.down = L.Convolution(n.data, num_output=3, kernel_size=3, stride=2, pad=1)
    n.up = L.Deconvolution(n.down, convolution_param=dict(num_output=3, group=3, kernel_size=4,
                                                          stride=2, pad=1))
    with pytest.raises(CoordMapError, match="not an integer"):
        crop(n.up, n.data)
    n.up_conv = L.Convolution(n.up, num_output=3, kernel_size=2, pad=1)
    assert crop(n.up_conv, n.data).fn.param_proto.crop_param.offset == [1]


def test_encoder_is_vgg16_with_strided_convolutions_for_its_poolings():
    net = zoo.net("attention_fcn_cityscapes", "deploy")
    convs = {l.name: l.convolution_param for l in net.layer if l.type == "Convolution"}
    vgg = [f"conv{s}_{i}" for s, c in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, c + 1)]
    assert all(convs[n].kernel_size == [3] and convs[n].pad == [1] and not convs[n].stride
               for n in vgg)
    assert [convs[n].num_output for n in vgg] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    for k, width in enumerate((64, 128, 256, 512, 512), 1):
        cp = convs[f"down{k}"]
        assert (cp.num_output, list(cp.kernel_size), list(cp.stride), list(cp.pad)) == \
            (width, [3], [2], [1])
    pools = [l for l in net.layer if l.type == "Pooling"]
    assert pools and all(l.pooling_param.global_pooling for l in pools)  # no max pooling left
    assert [list(convs[f"aspp_r{d}"].dilation) for d in (6, 12, 18)] == [[6], [12], [18]]


def test_deconvolutions_are_learnable_depthwise_and_exactly_bilinear():
    proto = {l.name: l for l in zoo.net("attention_fcn_voc", "train").layer}
    net = netspec.Net(deploy("attention_fcn_voc", 33, 47), netspec.TEST)
    for k in range(1, 6):
        lp = proto[f"up{k}"]
        cp = lp.convolution_param
        assert cp.group == cp.num_output and cp.weight_filler.type == "bilinear"
        assert lp.param[0].lr_mult > 0
        w = net.params[f"up{k}"][0].data
        assert w.shape == (cp.num_output, 1, 4, 4)
        np.testing.assert_array_equal(w, surgery.bilinear_weights(w.shape))


@pytest.fixture(scope="module")
def forward():
    torch.manual_seed(0)
    net = netspec.Net(deploy("attention_fcn_voc", 97, 131), netspec.TEST)
    rng = np.random.default_rng(0)
    for k in attention.DECODER_WIDTHS:  # zero at init (every gate 1/2): give the gates a spread
        w = net.params[f"se{k}_up"][0]
        assert not w.data.any()
        w.data = rng.normal(0, 0.01, w.shape)
    x = rng.normal(0, 50, (1, 3, 97, 131)).astype(np.float32)
    net.forward(data=x, blobs=list(net.blobs))
    return net


def test_squeeze_excitation_is_a_channel_wise_scale(forward):
    net = forward
    for k, width in attention.DECODER_WIDTHS.items():
        gate = net.blobs[f"se{k}_w"].data
        hidden = max(attention.SE_MIN_HIDDEN, width // attention.SE_REDUCTION)
        assert gate.shape == (1, width) and net.blobs[f"se{k}_down"].shape == (1, hidden, 1, 1)
        assert 0 < gate.min() and gate.max() < 1 and gate.std() > 0.01
        pooled = net.blobs[f"fuse{k}"].data.mean(axis=(2, 3))      # fuse{k} after its ReLU
        np.testing.assert_allclose(net.blobs[f"se{k}_pool"].data[:, :, 0, 0], pooled, rtol=1e-4,
                                   atol=1e-4)
        np.testing.assert_allclose(net.blobs[f"se{k}"].data,
                                   net.blobs[f"fuse{k}"].data * gate[:, :, None, None],
                                   rtol=1e-5, atol=1e-5)


def test_aspp_image_branch_equals_upsample_concat_project(forward):
    net = forward
    branches = [net.blobs[b].data for b in ("aspp_1x1", "aspp_r6", "aspp_r12", "aspp_r18")]
    h, w = branches[0].shape[2:]
    image = np.broadcast_to(net.blobs["aspp_pool_conv"].data, (1, 256, h, w))  # upsampled 1×1
    weight = np.concatenate([net.params["aspp_proj"][0].data,
                             net.params["aspp_pool_proj"][0].data], axis=1)    # (256, 1280, 1, 1)
    expected = F.conv2d(torch.from_numpy(np.concatenate(branches + [image], axis=1)),
                        torch.from_numpy(weight), torch.from_numpy(net.params["aspp_proj"][1].data))
    np.testing.assert_allclose(net.blobs["aspp"].data, F.relu(expected).numpy(), rtol=1e-4,
                               atol=1e-3)


@pytest.mark.parametrize("dataset, name", [(attention.CITYSCAPES, "cityscapes"),
                                           (attention.VOC, "voc")])
def test_data_loss_and_packer_agree(dataset, name):
    classes = {"cityscapes": packers.CITYSCAPES_CLASSES, "voc": packers.VOC_CLASSES}[name]
    assert dataset.num_classes == len(classes)
    train = zoo.net(f"attention_fcn_{name}", "train")
    data = train.layer[0].python_param
    assert (data.module, data.layer) == ("netspec.data.seg", "SegDataLayer")
    loss = [l for l in train.layer if l.type == "SoftmaxWithLoss"]
    assert len(loss) == 1 and list(loss[0].bottom) == ["score", "label"]
    assert loss[0].loss_param.ignore_label == 255
    assert loss[0].loss_param.normalization == loss[0].loss_param.VALID
    val = zoo.net(f"attention_fcn_{name}", "val").layer[0].python_param.param_str
    assert f"'source': 'data/{'pascal' if name == 'voc' else name}/" in val and "crop" not in val


def test_cityscapes_training_crops_reach_the_net_as_the_param_str_says(tmp_path):
    """The train net's own SegDataLayer settings on a small packed dataset: 768×768 crops of
    batch 2, labels padded with 255 where the crop leaves the (64×64) image."""
    from netspec.data.synthetic import pack
    from netspec.proto import caffe_pb2
    pack(str(tmp_path), n_train=3, n_val=1)
    layer = zoo.net("attention_fcn_cityscapes", "train").layer[0]
    assert "'crop': 768" in layer.python_param.param_str
    layer.python_param.param_str = layer.python_param.param_str.replace(
        "data/cityscapes/train", str(tmp_path / "train"))
    net_param = caffe_pb2.NetParameter()
    net_param.layer.add().CopyFrom(layer)
    net = netspec.Net(net_param, netspec.TRAIN)
    net.forward()
    assert net.blobs["data"].shape == (2, 3, 768, 768)
    label = net.blobs["label"].data
    assert label.shape == (2, 1, 768, 768)
    assert set(np.unique(label)) - {0, 1, 2, 3} == {255}
    assert (label != 255).sum() <= 2 * (64 * 1.5) ** 2  # at most two jittered 64×64 images
