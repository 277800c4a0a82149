"""The IDD models of the zoo, ``unet_idd`` and ``deeplabv3_resnet101_idd[_head]``: H×W scores at 720×1280 and at
odd sizes (shape inference), the DeepLab trunk being the ResNet-101 release layer for layer, the frozen and
learned parameters, the solvers, training on the synthetic demo shapes, ONNX export. Forward passes at
720×1280, 20-iteration runs and the exports themselves are marked slow (CPU minutes)."""
import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import netspec
from netspec.authoring import zoo
from netspec.authoring.coord_map import check_crops
from netspec.data.synthetic import pack
from netspec.interop.export import check_exportable
from netspec.proto import caffe_pb2
from netspec.authoring.zoo.deeplab import RESNET101_STAGES, block_names, deeplabv3, resnet101_deploy

ROOT = Path(__file__).resolve().parents[3]
IDD_MODELS = ("unet_idd", "deeplabv3_resnet101_idd", "deeplabv3_resnet101_idd_head")
HEAD_PREFIXES = ("aspp", "bn_aspp", "scale_aspp", "score")


def deploy_at(name, h, w, phase=netspec.TEST):
    net = zoo.net(name, "deploy")
    dims = net.layer[0].input_param.shape[0].dim
    assert list(dims) == [1, 3, 720, 1280]
    del dims[:]
    dims.extend([1, 3, h, w])
    return netspec.Net(net, phase)


def _layers(net):
    return {l.name: l for l in net.layer}


# -- shapes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h, w", [(720, 1280), (97, 131)])
def test_unet_score_is_hxw(h, w):
    net = deploy_at("unet_idd", h, w)
    assert net.blobs["score"].shape == (1, 26, h, w)
    # Caffe's ceil pooling rounds odd sides up; each up level is cropped back to its encoder block
    sizes = [(h, w)]
    for _ in range(4):
        sizes.append(tuple(-(-s // 2) for s in sizes[-1]))
    assert net.blobs["mid_2"].shape == (1, 1024, *sizes[4])
    for level in (1, 2, 3, 4):
        up = tuple(2 * s for s in sizes[level])
        assert net.blobs[f"up{level}"].shape[2:] == up
        assert net.blobs[f"up{level}_crop"].shape[2:] == net.blobs[f"enc{level}_2"].shape[2:] == sizes[level - 1]
        assert net.blobs[f"concat{level}"].shape[1] == 2 * net.blobs[f"enc{level}_2"].shape[1]
    check_exportable(net.module, dynamic_hw=True)  # every layer has a shape-generic ONNX form


@pytest.mark.parametrize("h, w, res5", [(720, 1280, (45, 80)), (97, 131, (6, 9))])
def test_deeplab_score_is_hxw_at_output_stride_16(h, w, res5):
    net = deploy_at("deeplabv3_resnet101_idd", h, w)
    assert net.blobs["score"].shape == (1, 26, h, w)
    assert net.blobs["res4b22"].shape == (1, 1024, *res5) and net.blobs["res5c"].shape == (1, 2048, *res5)
    assert net.blobs["aspp_pool"].shape == (1, 2048, 1, 1) and net.blobs["aspp_b4_up"].shape == (1, 256, *res5)
    assert net.blobs["aspp_concat"].shape == (1, 5 * 256, *res5) and net.blobs["score_fr"].shape == (1, 26, *res5)
    check_exportable(net.module, dynamic_hw=True)


def test_deeplab_output_stride_8():
    net = netspec.Net(_with_size(deeplabv3("deploy", output_stride=8), 97, 131), netspec.TEST)
    assert net.blobs["res3b3"].shape[2:] == net.blobs["res5c"].shape[2:] == (12, 17)
    conv = _layers(deeplabv3("deploy", output_stride=8))
    assert list(conv["res4a_branch2a"].convolution_param.stride) == [1]
    assert list(conv["res4b9_branch2b"].convolution_param.dilation) == [2]
    assert list(conv["res5b_branch2b"].convolution_param.dilation) == [4]
    assert list(conv["aspp_b3"].convolution_param.dilation) == [36]


def _with_size(net, h, w):
    dims = net.layer[0].input_param.shape[0].dim
    del dims[:]
    dims.extend([1, 3, h, w])
    return net


# -- the DeepLab trunk is the ResNet-101 release ---------------------------------------------------------

def test_release_deploy_layout():
    rel = resnet101_deploy()
    assert rel.name == "ResNet-101" and list(rel.input) == ["data"] and list(rel.input_dim) == [1, 3, 224, 224]
    names = [l.name for l in rel.layer]
    assert names[:6] == ["conv1", "bn_conv1", "scale_conv1", "conv1_relu", "pool1", "res2a_branch1"]
    assert names[6:8] == ["bn2a_branch1", "scale2a_branch1"]
    assert names[8:12] == ["res2a_branch2a", "bn2a_branch2a", "scale2a_branch2a", "res2a_branch2a_relu"]
    assert names[-3:] == ["pool5", "fc1000", "prob"] and len(names) == 449
    blocks = [l.name for l in rel.layer if l.type == "Eltwise"]
    assert blocks == (["res2a", "res2b", "res2c", "res3a", "res3b1", "res3b2", "res3b3", "res4a"]
                      + [f"res4b{i}" for i in range(1, 23)] + ["res5a", "res5b", "res5c"])
    assert sum(l.type == "Convolution" for l in rel.layer) == 104  # 1 + 33 * 3 + 4 projections
    layer = _layers(rel)
    for name in ("conv1", "res3a_branch1", "res4b22_branch2b"):
        assert not layer[name].convolution_param.bias_term and not layer[name].param
    assert layer["res3a_branch1"].convolution_param.stride == [2]
    assert layer["res3a_branch2a"].convolution_param.stride == [2]  # the release strides the 1x1 of branch2a
    assert layer["res3a_branch2b"].convolution_param.stride == [1]
    assert layer["bn4b5_branch2c"].batch_norm_param.use_global_stats
    assert layer["scale4b5_branch2c"].scale_param.bias_term
    assert list(layer["res5c"].bottom) == ["res5b", "res5c_branch2c"]
    assert layer["pool5"].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert [block_names(s, n)[-1] for s, n, _, _ in RESNET101_STAGES] == ["c", "b3", "b22", "c"]


@pytest.mark.parametrize("name", IDD_MODELS[1:])
def test_deeplab_trunk_is_the_release_but_for_strides_dilations_and_param_specs(name):
    rel = resnet101_deploy()
    ours = zoo.net(name, "deploy")
    trunk = [l for l in ours.layer[1:] if not l.name.startswith(HEAD_PREFIXES)]
    assert [l.name for l in trunk] == [l.name for l in rel.layer[:-3]]
    for mine, theirs in zip(trunk, rel.layer):
        mine, theirs = type(mine).FromString(mine.SerializeToString()), type(theirs).FromString(
            theirs.SerializeToString())
        # the training additions: multipliers of the convolutions, frozen BatchNorm and Scale layers
        assert bool(mine.param) == (mine.type in ("Convolution", "BatchNorm", "Scale")), mine.name
        del mine.param[:]
        if mine.name.startswith("res5") and mine.type == "Convolution":
            cp = mine.convolution_param
            if mine.name in ("res5a_branch1", "res5a_branch2a"):  # output stride 16: res5 keeps stride 1
                assert list(cp.stride) == [1]
                cp.stride[0] = 2
            if mine.name.endswith("branch2b"):                    # ... and dilates its 3x3 by 2
                assert list(cp.dilation) == [2] and list(cp.pad) == [2]
                del cp.dilation[:]
                cp.pad[0] = 1
        if mine.name == "conv1":
            assert list(mine.bottom) == ["data"]
        assert mine == theirs, mine.name


def test_head_variant_freezes_the_trunk_the_full_one_its_statistics():
    head, full = _layers(zoo.net(IDD_MODELS[2], "train")), _layers(zoo.net(IDD_MODELS[1], "train"))
    assert head.keys() == full.keys()
    for name, lp in head.items():
        if lp.type not in ("Convolution", "BatchNorm", "Scale"):
            continue
        specs_head = [(p.lr_mult, p.decay_mult) for p in lp.param]
        specs_full = [(p.lr_mult, p.decay_mult) for p in full[name].param]
        if lp.type == "BatchNorm":
            assert specs_head == specs_full == [(0, 0)] * 3, name
        elif name.startswith(HEAD_PREFIXES):
            # the head learns in both (a Scale without param specs: lr_mult 1, the default)
            assert specs_head == specs_full and all(lr > 0 for lr, _ in specs_head), name
            assert specs_head or lp.type == "Scale", name
        else:
            assert specs_head == [(0, 0)] * len(lp.param), name             # trunk: frozen in the head variant
            if lp.type == "Scale":
                assert specs_full == [(0, 0), (0, 0)], name                 # Caffe-era DeepLab: frozen Scale
            else:
                assert specs_full == [(1, 1)], name
            assert lp.batch_norm_param.use_global_stats if lp.type == "BatchNorm" else True
    assert not head["bn_aspp_b0"].batch_norm_param.HasField("use_global_stats")  # batch statistics in TRAIN
    assert head["bn4b3_branch2a"].batch_norm_param.use_global_stats


def test_aspp_head():
    layer = _layers(zoo.net(IDD_MODELS[1], "train"))
    assert [list(layer[f"aspp_b{i}"].convolution_param.dilation) for i in (1, 2, 3)] == [[6], [12], [18]]
    assert [list(layer[f"aspp_b{i}"].convolution_param.pad) for i in (1, 2, 3)] == [[6], [12], [18]]
    assert layer["aspp_pool"].pooling_param.global_pooling
    assert layer["aspp_pool"].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert list(layer["aspp_b4_up"].bottom) == ["aspp_b4", "res5c"] and layer["aspp_b4_up"].type == "Interp"
    assert list(layer["aspp_concat"].bottom) == ["aspp_b0", "aspp_b1", "aspp_b2", "aspp_b3", "aspp_b4_up"]
    assert list(layer["aspp_proj"].bottom) == ["aspp_concat"] and "bn_aspp_proj" in layer
    assert layer["score_fr"].convolution_param.num_output == 26
    assert list(layer["score"].bottom) == ["score_fr", "data"] and layer["score"].type == "Interp"
    assert list(layer["loss"].bottom) == ["score", "label"]


def test_unet_blocks_and_crops():
    net = zoo.net("unet_idd", "train")
    layer = _layers(net)
    convs = [l for l in net.layer if l.type == "Convolution" and l.name != "score"]
    assert len(convs) == 18 and [l.type for l in net.layer].count("Deconvolution") == 4
    assert [l.type for l in net.layer].count("Pooling") == 4
    for conv in convs:  # Conv -> BatchNorm -> Scale(bias) -> ReLU, in place
        assert not conv.convolution_param.bias_term and list(conv.convolution_param.kernel_size) == [3]
        bn, sc, relu = layer[f"{conv.name}_bn"], layer[f"{conv.name}_scale"], layer[f"{conv.name}_relu"]
        assert (bn.type, sc.type, relu.type) == ("BatchNorm", "Scale", "ReLU") and sc.scale_param.bias_term
        assert list(bn.bottom) == list(bn.top) == list(sc.top) == list(relu.top) == [conv.name]
    for level in (1, 2, 3, 4):
        up = layer[f"up{level}"].convolution_param
        assert (list(up.kernel_size), list(up.stride)) == ([2], [2])
        assert list(layer[f"concat{level}"].bottom) == [f"enc{level}_2", f"up{level}_crop"]
    checks = check_crops(net)
    assert len(checks) == 4 and all(c.ok and c.given == (2, [0]) for c in checks)


@pytest.mark.parametrize("name", IDD_MODELS)
def test_data_layers_and_loss(name):
    train, val = zoo.net(name, "train"), zoo.net(name, "val")
    p = ast.literal_eval(train.layer[0].python_param.param_str)
    assert p["source"] == "data/idd/train" and p["mirror"] is True and p["rotate"] == 10
    assert p["batch_size"] >= 2 and p["crop"] in (512, 513)  # batch statistics need more than one image
    assert ast.literal_eval(val.layer[0].python_param.param_str) == {"source": "data/idd/val", "seed": 1337}
    loss = _layers(train)["loss"].loss_param
    assert loss.ignore_label == 255 and loss.normalization == caffe_pb2.LossParameter.VALID
    assert len(loss.class_weight) == 26
    # the committed files carry what the repository's data/idd/train/class_weights.txt says (all 1 without it)
    text = (ROOT / "prototxt" / name / "train.prototxt").read_text()
    assert text.count("class_weight:") == 26


@pytest.mark.parametrize("name", IDD_MODELS)
def test_solvers(name):
    sp = zoo.solver(name)
    assert (sp.type, sp.lr_policy, sp.momentum, sp.max_iter) == ("SGD", "poly", pytest.approx(0.9), 30000)
    assert sp.base_lr == pytest.approx(0.01) and sp.power == pytest.approx(0.9)
    assert sp.weight_decay == pytest.approx(1e-4) and list(sp.test_iter) == [981]
    assert sp.train_net == f"prototxt/{name}/train.prototxt" and sp.snapshot_prefix == f"snapshots/{name}/train"
    assert (ROOT / "solvers" / f"{name}.prototxt").read_text().count("lr_policy: \"poly\"") == 1


# -- training on the demo shapes ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    pack(str(d), n_train=16, n_val=2)
    return d


@pytest.mark.parametrize("iters", [pytest.param(6, id="6"), pytest.param(20, id="20", marks=pytest.mark.slow)])
def test_unet_trains_on_the_demo_shapes(demo, iters):
    """The zoo's train net and solver as generated (SGD poly, base_lr 0.01, no raise needed: the BatchNorm
    net trains at its own rate), the data layer pointed at the demo shapes with 32×32 crops; the loss falls."""
    net = zoo.net("unet_idd", "train")
    net.layer[0].python_param.param_str = repr(dict(source=str(demo / "train"), batch_size=1, crop=32,
                                                    mirror=True, rotate=10, seed=1))
    sp = zoo.solver("unet_idd")
    for f in ("train_net", "test_net", "test_iter", "test_interval", "snapshot"):
        sp.ClearField(f)
    sp.train_net_param.CopyFrom(net)
    sp.display = 0
    torch.manual_seed(0)
    solver = netspec.Solver(sp) if hasattr(netspec, "Solver") else netspec.get_solver(sp)
    losses = []
    for _ in range(iters):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert np.all(np.isfinite(losses))
    k = max(2, iters // 4)
    assert np.mean(losses[-k:]) < (0.85 if iters < 20 else 0.6) * np.mean(losses[:k]), losses


# -- slow: forward passes at 720x1280, ONNX export --------------------------------------------------------

def _randomize(net, seed=0):
    """Sane random weights: He-initialised convolutions, BatchNorm statistics (0, 1), damped residuals."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for node in net.module.nodes:
            blobs = net.module.layer_blobs(node.index)
            if node.type in ("Convolution", "Deconvolution"):
                w = blobs[0]
                fan_in = w[0].numel() if node.type == "Convolution" else w.shape[0] * w[0, 0].numel() / 4
                w.copy_(torch.randn(w.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                for b in blobs[1:]:
                    b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif node.type == "BatchNorm":
                blobs[0].copy_(torch.randn(blobs[0].shape, generator=g) * 0.1)
                blobs[1].copy_(torch.rand(blobs[1].shape, generator=g) + 0.5)
                blobs[2].fill_(1.0)
            elif node.type == "Scale":
                blobs[0].fill_(0.2 if node.name.endswith("branch2c") else 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", IDD_MODELS[:2])
def test_forward_at_720x1280(name):
    net = deploy_at(name, 720, 1280)
    _randomize(net)
    x = np.random.default_rng(0).normal(size=(1, 3, 720, 1280)).astype(np.float32) * 50
    with torch.no_grad():
        out = net.forward(data=x)["score"]
    assert out.shape == (1, 26, 720, 1280) and np.isfinite(out).all() and out.std() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name, h, w", [("unet_idd", 64, 96), ("deeplabv3_resnet101_idd", 97, 131)])
def test_onnx_export_runs_in_onnxruntime(name, h, w, tmp_path):
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(mod)
    from netspec.interop import export
    net = deploy_at(name, h, w)
    _randomize(net)
    report = export.export(net, onnx_path=str(tmp_path / f"{name}.onnx"), dynamic_hw=True, check=True,
                           tol=1e-4)
    assert report.dynamic["data"] == [0, 2, 3]
    checks = [c for c in report.checks if c[0] == "onnxruntime"]
    assert len(checks) == 2 and all(err <= 1e-4 for *_, err in checks)  # the example size and a second one
