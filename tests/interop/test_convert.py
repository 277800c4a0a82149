"""caffemodel <-> PyTorch state dict conversion, listing and BatchNorm folding (netspec.interop.convert,
tools/convert_caffemodel.py). Golden cases read ../shared/golden in place (skipped without it)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from netspec.formats import binary
from netspec.interop import convert
from netspec.interop.convert import ConvertError
from netspec.errors import FormatError, WeightsError
from netspec.net.pycaffe import TEST, TRAIN, Net
from netspec.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[2]

# Golden cases whose caffemodel goes through .pt and back: every net, and layers with unusual blobs
# (0-d PReLU slope, BatchNorm's scale factor, transposed / axis-2 InnerProduct, Embed, 2-bottom Scale,
# duplicate layer names, auto-inserted Split layers, a TRAIN-phase net).
ROUND_TRIP = [
    "nets/fcn32s", "nets/fcn8s_atonce", "nets/dilated_fcn2s_vgg19",
    "layers/prelu_shared", "layers/prelu_channelwise", "layers/bn_global_stats", "layers/bn_train_batch_stats",
    "layers/ip_transpose", "layers/ip_axis2_nobias", "layers/embed", "layers/scale_param_scalar",
    "layers/scale_2bottom_axis1", "layers/bias_param", "layers/deconv_k4s2_groupC_nobias",
    "layers/conv_asym_stride_dil_nobias", "formats/fanout_split_caffemodel",
]


def _case(shared_dir, name):
    d = shared_dir / "golden" / name
    if not d.is_dir():
        pytest.skip(f"golden case {name} not present")
    meta = json.loads((d / "meta.json").read_text())
    return d, (TRAIN if meta.get("phase") == "TRAIN" else TEST)


def _tool():
    spec = importlib.util.spec_from_file_location("_convert_tool", ROOT / "tools" / "convert_caffemodel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("case", ROUND_TRIP)
def test_golden_caffemodel_pt_caffemodel_round_trip(shared_dir, tmp_path, case):
    d, phase = _case(shared_dir, case)
    src = d / "weights.caffemodel"
    pt, back = tmp_path / "w.pt", tmp_path / "w.caffemodel"
    # No prototxt: keys from the caffemodel's own layer list.
    report = convert.convert(str(src), str(pt))
    state = torch.load(pt, weights_only=True)
    net = Net(str(d / "net.prototxt"), phase)
    assert list(state) == list(net.module.state_dict()), "keys differ from the netspec module's"
    assert report.key_source == f"{src}'s own layer list"
    net.module.load_state_dict(state, strict=True)
    # Same keys and values with the prototxt.
    pt2 = tmp_path / "w2.pt"
    convert.convert(str(src), str(pt2), prototxt_path=str(d / "net.prototxt"), phase=phase)
    state2 = torch.load(pt2, weights_only=True)
    assert list(state2) == list(state)
    assert all(torch.equal(state[k], state2[k]) for k in state)
    # Back to a caffemodel: blobs identical, and the whole file byte for byte (Caffe wrote the original).
    convert.convert(str(pt), str(back), prototxt_path=str(d / "net.prototxt"), phase=phase)
    a, b = binary.read_caffemodel(str(src)), binary.read_caffemodel(str(back))
    assert [l.name for l in a.net.layer] == [l.name for l in b.net.layer]
    for x, y in zip(a.blobs, b.blobs):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            assert u.shape == v.shape and u.tobytes() == v.tobytes()
    assert back.read_bytes() == src.read_bytes()


def test_v1_caffemodel_converts_and_gives_caffes_forward(shared_dir, tmp_path):
    d, _ = _case(shared_dir, "formats/v1_vgg_like")
    pt = tmp_path / "v1.pt"
    report = convert.convert(str(d / "weights.caffemodel"), str(pt))
    assert any("V1LayerParameter" in line for line in report.upgraded)
    state = torch.load(pt, weights_only=True)
    # Legacy 4-D blobs come out in the layers' shapes.
    assert tuple(state["fc6.weight"].shape) == (16, 128) and tuple(state["fc6.bias"].shape) == (16,)
    inputs, forward = np.load(d / "inputs.npz"), np.load(d / "forward.npz")
    for proto in ("net.prototxt", "upgraded.prototxt"):  # the V1 text and Caffe's upgraded text
        net = Net(str(d / proto), TEST)
        net.module.load_state_dict(state, strict=True)
        out = net.forward(data=inputs["data"])
        for name in ("fc8", "prob"):
            want = forward[name]
            got = out[name] if name in out else net.blobs[name].data
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max() + 1e-6, name
    # .pt -> caffemodel (current format) loads into Caffe's upgraded net with the same outputs.
    back = tmp_path / "v1_back.caffemodel"
    convert.convert(str(pt), str(back), prototxt_path=str(d / "net.prototxt"))
    assert "current" in convert.list_file(str(back))
    net = Net(str(d / "upgraded.prototxt"), str(back), TEST)
    net.forward(data=inputs["data"])
    want = forward["prob"]
    assert np.abs(net.blobs["prob"].data - want).max() <= 1e-4 * np.abs(want).max() + 1e-6


def test_list_shows_format_shapes_counts(shared_dir, capsys):
    d, _ = _case(shared_dir, "formats/v1_vgg_like")
    assert _tool().main(["--list", str(d / "weights.caffemodel")]) == 0
    out = capsys.readouterr().out
    assert "format: V1" in out
    assert "1x1x16x128*" in out and "InnerProduct" in out and "2,064" in out
    assert "total: 16 layers, 6 with blobs, 12 blobs, 2,977 parameters" in out
    d2, _ = _case(shared_dir, "nets/fcn32s")
    listing = convert.list_file(str(d2 / "weights.caffemodel"))
    assert "format: current (NetParameter.layer" in listing and "Deconvolution" in listing


def _bn_net_text(input_shape=(2, 3, 9, 11)):
    dims = " ".join(f"dim: {d}" for d in input_shape)
    return f"""
name: "bn_fold"
layer {{ name: "input" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 }} }}
layer {{ name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }}
layer {{ name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param {{ bias_term: true }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param {{ num_output: 6 kernel_size: 3 group: 2 bias_term: false }} }}
layer {{ name: "bn2" type: "BatchNorm" bottom: "conv2" top: "bn2" batch_norm_param {{ eps: 0.001 }} }}
layer {{ name: "scale2" type: "Scale" bottom: "bn2" top: "scale2" }}
layer {{ name: "up" type: "Deconvolution" bottom: "scale2" top: "up"
        convolution_param {{ num_output: 4 kernel_size: 4 stride: 2 group: 2 bias_term: false }} }}
layer {{ name: "bn3" type: "BatchNorm" bottom: "up" top: "up" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "up" top: "fc" inner_product_param {{ num_output: 5 }} }}
layer {{ name: "bn4" type: "BatchNorm" bottom: "fc" top: "fc" }}
layer {{ name: "side" type: "Convolution" bottom: "data" top: "side"
        convolution_param {{ num_output: 3 kernel_size: 1 }} }}
layer {{ name: "bn5" type: "BatchNorm" bottom: "side" top: "bn5" }}
layer {{ name: "peek" type: "ReLU" bottom: "side" top: "peek" }}
"""


def _random_weights(net: Net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for node in net.module.nodes:
            blobs = net.module.layer_blobs(node.index)
            if node.type == "BatchNorm":
                c = blobs[0].numel()
                sf = 0.7
                blobs[0].copy_(torch.randn(c, generator=g) * sf)
                blobs[1].copy_((torch.rand(c, generator=g) + 0.3) * sf)
                blobs[2].fill_(sf)
            else:
                for p in blobs:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_fold_bn_matches_unfolded_net(tmp_path):
    proto = tmp_path / "net.prototxt"
    proto.write_text(_bn_net_text())
    net = Net(str(proto), TEST)
    _random_weights(net)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 11)).astype(np.float32)
    want = {k: v.copy() for k, v in net.forward(data=x).items()}

    folded_proto, folded_pt = tmp_path / "folded.prototxt", tmp_path / "folded.pt"
    report = convert.convert(str(weights), str(folded_pt), prototxt_path=str(proto), fold_bn=True,
                             out_prototxt=str(folded_proto))
    assert report.folded == ["bn1", "scale1", "bn2", "scale2", "bn3", "bn4"]
    assert len(report.not_folded) == 1 and "bn5" in report.not_folded[0] and "peek" in report.not_folded[0]
    text = folded_proto.read_text()
    for gone in ("bn1", "scale1", "bn2", "scale2", "bn3", "bn4"):
        assert f'name: "{gone}"' not in text
    assert 'name: "bn5"' in text and "BatchNorm" in text and "Scale" not in text
    folded = Net(str(folded_proto), TEST)
    state = torch.load(folded_pt, weights_only=True)
    assert "conv2.bias" in state and "up.bias" in state and not any(k.startswith("bn1.") for k in state)
    folded.module.load_state_dict(state, strict=True)
    got = folded.forward(data=x)
    assert set(got) == set(want)  # fc, bn5, peek: the net's outputs keep their names
    for k in want:
        assert np.abs(got[k] - want[k]).max() <= 1e-5 * np.abs(want[k]).max() + 1e-6, k
    # Without the prototxt: the caffemodel's own layer list (with the Split layer Caffe inserted for 'data');
    # the written prototxt has no Split layers and builds the same folded net.
    own_proto, own_pt = tmp_path / "own.prototxt", tmp_path / "own.pt"
    report = convert.convert(str(weights), str(own_pt), fold_bn=True, out_prototxt=str(own_proto))
    assert report.folded == ["bn1", "scale1", "bn2", "scale2", "bn3", "bn4"]
    assert "Split" not in own_proto.read_text()
    own = Net(str(own_proto), TEST)
    own.module.load_state_dict(torch.load(own_pt, weights_only=True), strict=True)
    got = own.forward(data=x)
    for k in want:
        assert np.abs(got[k] - want[k]).max() <= 1e-5 * np.abs(want[k]).max() + 1e-6, k
    # The same as a caffemodel that Caffe/OpenCV would load with the folded prototxt.
    folded_cm = tmp_path / "folded.caffemodel"
    convert.convert(str(weights), str(folded_cm), prototxt_path=str(proto), fold_bn=True)
    again = Net(str(folded_proto), str(folded_cm), TEST).forward(data=x)
    for k in want:
        assert np.abs(again[k] - want[k]).max() <= 1e-5 * np.abs(want[k]).max() + 1e-6, k
    # OpenCV's dnn reads the folded deploy pair and agrees (a second opinion on what Caffe would load).
    cv2 = pytest.importorskip("cv2")
    cv = cv2.dnn.readNetFromCaffe(str(folded_proto), str(folded_cm))
    if hasattr(cv, "enableWinograd"):
        cv.enableWinograd(False)
    cv.setInput(x)
    for k, g in zip(["fc", "bn5", "peek"], cv.forward(["fc", "bn5", "peek"])):
        assert np.abs(g.reshape(want[k].shape) - want[k]).max() <= 1e-5 * np.abs(want[k]).max() + 1e-6, k


def test_fold_bn_maths_with_scale_factor_zero_and_eps():
    """Caffe: a zero scale factor means mean = var = 0; eps comes from batch_norm_param."""
    net = caffe_pb2.NetParameter()
    conv = net.layer.add(name="c", type="Convolution", bottom=["x"], top=["c"])
    conv.convolution_param.num_output = 2
    bn = net.layer.add(name="bn", type="BatchNorm", bottom=["c"], top=["c"])
    bn.batch_norm_param.eps = 0.25
    w = convert.Weights()
    w.add(convert.LayerWeights("c", "Convolution", [np.ones((2, 1, 1, 1), np.float32),
                                                    np.array([1.0, 2.0], np.float32)], [False, False]))
    w.add(convert.LayerWeights("bn", "BatchNorm", [np.array([5.0, 5.0], np.float32),
                                                   np.array([3.0, 3.0], np.float32),
                                                   np.array([0.0], np.float32)], [False] * 3))
    out, weights, folded, skipped = convert.fold_batchnorm(net, w)
    assert folded == ["bn"] and not skipped and [l.name for l in out.layer] == ["c"]
    wc, bc = weights["c"].arrays
    assert np.allclose(wc.ravel(), 2.0) and np.allclose(bc, [2.0, 4.0])  # 1/sqrt(0 + 0.25) = 2


def test_fp16_output(shared_dir, tmp_path):
    d, _ = _case(shared_dir, "nets/fcn32s")
    pt16, pt32 = tmp_path / "h.pt", tmp_path / "f.pt"
    convert.convert(str(d / "weights.caffemodel"), str(pt16), fp16=True)
    convert.convert(str(d / "weights.caffemodel"), str(pt32))
    s16, s32 = torch.load(pt16, weights_only=True), torch.load(pt32, weights_only=True)
    assert list(s16) == list(s32)
    assert all(v.dtype == torch.float16 for v in s16.values())
    assert all(torch.equal(s16[k], s32[k].half()) for k in s32)
    assert pt16.stat().st_size < 0.6 * pt32.stat().st_size
    with pytest.raises(ConvertError, match="float32"):
        convert.convert(str(pt16), str(tmp_path / "x.caffemodel"), prototxt_path=str(d / "net.prototxt"),
                        fp16=True)
    # .pt -> .pt without a net: a dtype change only.
    pt16b = tmp_path / "h2.pt"
    convert.convert(str(pt32), str(pt16b), fp16=True)
    s16b = torch.load(pt16b, weights_only=True)
    assert list(s16b) == list(s16) and all(torch.equal(s16b[k], s16[k]) for k in s16)
    # fp16 .pt back to a caffemodel: float32 values of the halves.
    back = tmp_path / "h.caffemodel"
    convert.convert(str(pt16), str(back), prototxt_path=str(d / "net.prototxt"))
    net = Net(str(d / "net.prototxt"), str(back), TEST)
    assert torch.equal(net.module.state_dict()["conv1_1.weight"], s16["conv1_1.weight"].float())


def test_shape_mismatch_names_layer_and_both_shapes(shared_dir, tmp_path):
    d, _ = _case(shared_dir, "layers/conv_k3_p1_bias")
    other, _ = _case(shared_dir, "layers/conv_group2_stride2")
    with pytest.raises(WeightsError) as e:
        convert.convert(str(d / "weights.caffemodel"), str(tmp_path / "x.pt"),
                        prototxt_path=str(other / "net.prototxt"))
    msg = str(e.value)
    assert "layer 'conv' (Convolution)" in msg and "(4, 3, 3, 3)" in msg and "(6, 2, 3, 3)" in msg
    # The same from a .pt whose tensor does not fit the prototxt.
    pt = tmp_path / "w.pt"
    convert.convert(str(d / "weights.caffemodel"), str(pt))
    with pytest.raises(WeightsError, match=r"layer 'conv' \(Convolution\) blob 0 \(weight\).*\(4, 3, 3, 3\).*"
                                           r"\(6, 2, 3, 3\)"):
        convert.convert(str(pt), str(tmp_path / "x.caffemodel"), prototxt_path=str(other / "net.prototxt"))
    assert not (tmp_path / "x.caffemodel").exists() and not (tmp_path / "x.pt").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_inputs_give_clear_errors(shared_dir, tmp_path):
    d, _ = _case(shared_dir, "layers/conv_k3_p1_bias")
    junk = tmp_path / "junk.caffemodel"
    junk.write_text("name: 'not binary'\nlayer { name: 'x' }\n")
    with pytest.raises(FormatError, match="looks like text"):
        convert.convert(str(junk), str(tmp_path / "y.pt"))
    with pytest.raises(FormatError):
        convert.list_file(str(junk))
    notpt = tmp_path / "model.pt"
    notpt.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(FormatError, match="torch.load"):
        convert.convert(str(notpt), str(tmp_path / "y.caffemodel"), prototxt_path=str(d / "net.prototxt"))
    npz = tmp_path / "arrays.bin"
    np.savez(npz, a=np.zeros(3))
    with pytest.raises(ConvertError, match="npz"):
        convert.convert(str(tmp_path / "arrays.bin.npz"), str(tmp_path / "y.pt"))
    # a .pt needs the prototxt that names its blobs
    pt = tmp_path / "w.pt"
    convert.convert(str(d / "weights.caffemodel"), str(pt))
    with pytest.raises(ConvertError, match="--prototxt"):
        convert.convert(str(pt), str(tmp_path / "y.caffemodel"))
    with pytest.raises(ConvertError, match="net definition"):
        convert.convert(str(d / "net.prototxt"), str(tmp_path / "y.pt"))


def test_refuses_to_overwrite_input(shared_dir, tmp_path):
    d, _ = _case(shared_dir, "layers/conv_k3_p1_bias")
    src = tmp_path / "w.caffemodel"
    src.write_bytes((d / "weights.caffemodel").read_bytes())
    before = src.read_bytes()
    with pytest.raises(ConvertError, match="refusing to overwrite the input"):
        convert.convert(str(src), str(src))
    pt = tmp_path / "w.pt"
    convert.convert(str(src), str(pt))
    proto = tmp_path / "net.prototxt"
    proto.write_bytes((d / "net.prototxt").read_bytes())
    with pytest.raises(ConvertError, match="refusing to overwrite the input"):
        convert.convert(str(pt), str(tmp_path / "o.caffemodel"), prototxt_path=str(proto),
                        out_prototxt=str(proto))
    link = tmp_path / "link.caffemodel"
    link.symlink_to(src)
    with pytest.raises(ConvertError, match="refusing to overwrite the input"):
        convert.convert(str(src), str(link))  # the output resolves to the input
    assert src.read_bytes() == before
    # A read-only file is never replaced (a rename would do it even for root).
    ro = tmp_path / "ro.caffemodel"
    ro.write_bytes(b"x")
    ro.chmod(0o444)
    with pytest.raises(ConvertError, match="read-only"):
        convert.convert(str(pt), str(ro), prototxt_path=str(proto))
    # The CLI says so and exits 1 (the work failed; 2 is for a wrong command line).
    assert _tool().main([str(src), str(src)]) == 1


def test_layer_list_keys_when_the_net_cannot_be_built(tmp_path):
    """A TRAIN snapshot whose Data layer's LMDB is absent, with a layer type netspec does not know."""
    net = caffe_pb2.NetParameter(name="snap")
    data = net.layer.add(name="data", type="Data", top=["data", "label"], phase=caffe_pb2.TRAIN)
    data.data_param.source = str(tmp_path / "missing_lmdb")
    data.data_param.batch_size = 2
    conv = net.layer.add(name="conv.1", type="Convolution", bottom=["data"], top=["c"], phase=caffe_pb2.TRAIN)
    conv.convolution_param.num_output = 2
    conv.convolution_param.kernel_size.append(1)
    net.layer.add(name="norm", type="Region", bottom=["c"], top=["n"], phase=caffe_pb2.TRAIN)
    net.layer.add(name="forward", type="BatchNorm", bottom=["n"], top=["b"], phase=caffe_pb2.TRAIN)
    blobs = [[], [np.ones((2, 3, 1, 1), np.float32), np.zeros(2, np.float32)], [np.full(2, 3.0, np.float32)],
             [np.zeros(2, np.float32), np.ones(2, np.float32), np.ones(1, np.float32)]]
    src = tmp_path / "snap.caffemodel"
    binary.write_caffemodel(str(src), net, blobs)
    pt = tmp_path / "snap.pt"
    report = convert.convert(str(src), str(pt))
    assert report.key_source == "layer list" and any("cannot be built" in n for n in report.notes)
    state = torch.load(pt, weights_only=True)
    assert list(state) == ["conv%2E1.weight", "conv%2E1.bias", "norm.0",
                           "forward#1.mean", "forward#1.variance", "forward#1.scale_factor"]
    # caffemodel -> caffemodel still works: the layers are written back as stored.
    back = tmp_path / "back.caffemodel"
    convert.convert(str(src), str(back))
    assert back.read_bytes() == src.read_bytes()


def test_cli_round_trip_and_messages(shared_dir, tmp_path, capsys):
    d, _ = _case(shared_dir, "nets/fcn8s_atonce")
    tool = _tool()
    pt, back = tmp_path / "m.pt", tmp_path / "m.caffemodel"
    assert tool.main([str(d / "weights.caffemodel"), str(pt), "--prototxt", str(d / "net.prototxt")]) == 0
    assert tool.main([str(pt), str(back), "--prototxt", str(d / "net.prototxt")]) == 0
    out = capsys.readouterr().out
    assert "289,941 parameters" in out
    assert back.read_bytes() == (d / "weights.caffemodel").read_bytes()
    assert tool.main(["--list", str(pt)]) == 0
    assert "PyTorch state dict" in capsys.readouterr().out
    assert tool.main([str(pt), str(tmp_path / "z.caffemodel")]) == 1
    assert "--prototxt" in capsys.readouterr().err
