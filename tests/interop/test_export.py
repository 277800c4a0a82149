"""ONNX / TorchScript / torch.export export of deploy nets (netspec.interop.export, tools/export_onnx.py), and OpenCV's
dnn module as a second opinion on caffemodels netspec writes.

The ONNX tests need onnx, onnxscript and onnxruntime (``pip install onnx onnxscript onnxruntime``) and skip
without them; the OpenCV test needs opencv-python-headless (an install requirement).
"""

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from netspec.interop import export
from netspec.interop.export import ExportError, relative_error
from netspec.net.pycaffe import TEST, Net

ROOT = Path(__file__).resolve().parents[2]
DEMO_DEPLOY = ROOT / "prototxt" / "demo" / "deploy.prototxt"


def _need_onnx():
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(mod)


def _randomize(net: Net, seed: int = 0) -> None:
    """Random weights with a sane scale (fan-in normalised), biases and Scale factors non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for node in net.module.nodes:
            for j, p in enumerate(net.module.layer_blobs(node.index)):
                if node.type == "Scale":
                    p.copy_(torch.rand(p.shape, generator=g) + 0.5)
                elif p.dim() >= 2:
                    fan_in = p[0].numel() if node.type != "Deconvolution" else p.shape[0] * p[0, 0].numel() / 4
                    p.copy_(torch.randn(p.shape, generator=g) * (2.0 / max(fan_in, 1)) ** 0.5)
                else:
                    p.copy_(torch.rand(p.shape, generator=g) * 0.2 - 0.1)


def _netspec(net: Net, **inputs):
    with torch.no_grad():
        out = net.module.forward({k: torch.from_numpy(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items() if k != "__loss__"}


# A tiny Dilated-FCN-style net: pad-100-like border, dilated conv, ceil pooling with and without padding,
# deconvolution, Crop (single offset and per-axis offsets), a learned Scale on the skip branch, Eltwise SUM
# and MAX, Concat, BatchNorm (global stats) and Softmax.
DILATED = """
name: "tiny_dilated"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 29 dim: 35 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 12 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 dilation: 2 pad: 2 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" batch_norm_param { use_global_stats: true } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc6" type: "Convolution" bottom: "pool2" top: "fc6"
        convolution_param { num_output: 8 kernel_size: 3 dilation: 3 pad: 3 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "score_fr" type: "Convolution" bottom: "fc6" top: "score_fr"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "upscore2" type: "Deconvolution" bottom: "score_fr" top: "upscore2"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 group: 4 bias_term: false } }
layer { name: "scale_pool1" type: "Scale" bottom: "pool1" top: "scaled_pool1" scale_param { bias_term: true } }
layer { name: "score_pool1" type: "Convolution" bottom: "scaled_pool1" top: "score_pool1"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "Cropping" type: "Crop" bottom: "upscore2" bottom: "score_pool1" top: "upscore2c"
        crop_param { axis: 2 offset: 1 } }
layer { name: "fuse" type: "Eltwise" bottom: "upscore2c" bottom: "score_pool1" top: "fuse_pool1"
        eltwise_param { operation: SUM coeff: 1 coeff: 0.5 } }
layer { name: "upscore" type: "Deconvolution" bottom: "fuse_pool1" top: "upscore"
        convolution_param { num_output: 4 kernel_size: 6 stride: 2 bias_term: false } }
layer { name: "Cropping" type: "Crop" bottom: "upscore" bottom: "data" top: "score"
        crop_param { axis: 2 offset: 6 offset: 5 } }
layer { name: "mx" type: "Eltwise" bottom: "score" bottom: "score" top: "score_max"
        eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "score_max" bottom: "data" top: "cat" }
layer { name: "prob" type: "Softmax" bottom: "cat" top: "prob" }
"""


@pytest.fixture(scope="module")
def dilated_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("dilated") / "deploy.prototxt"
    path.write_text(DILATED)
    net = Net(str(path), TEST)
    _randomize(net, 3)
    with torch.no_grad():  # BatchNorm accumulators: mean, var (> 0), scale factor != 1
        bn = net.params["bn2"]
        bn[0].data[...] = np.linspace(-1, 1, 8) * 0.5
        bn[1].data[...] = np.linspace(0.5, 2, 8) * 0.5
        bn[2].data[...] = 0.5
    return path, net


def test_demo_deploy_onnx_dynamic_hw_two_sizes(tmp_path):
    _need_onnx()
    import onnxruntime as ort

    net = Net(str(DEMO_DEPLOY), TEST)
    _randomize(net, 1)
    out = tmp_path / "demo.onnx"
    lines = []
    report = export.export(net, onnx_path=str(out), dynamic_hw=True, check=True, echo=lines.append)
    assert report.dynamic["data"] == [0, 2, 3]
    sizes = {c[1] for c in report.checks}
    assert len(sizes) == 2 and report.max_error <= 1e-5, report.checks
    assert any("relative error" in l for l in lines)
    # Independently of export()'s own check: two more sizes, odd and even, run in onnxruntime.
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["data"]
    assert [o.name for o in sess.get_outputs()] == ["score"]
    rng = np.random.default_rng(5)
    for shape in [(1, 3, 48, 72), (2, 3, 61, 53)]:
        x = rng.standard_normal(shape).astype(np.float32)
        want = _netspec(net, data=x)["score"]
        got = sess.run(None, {"data": x})[0]
        assert got.shape == want.shape == (shape[0], 4) + shape[2:]
        assert relative_error(got, want) <= 1e-5


def test_dilated_style_net_onnx_torchscript_export(dilated_net, tmp_path):
    _need_onnx()
    import onnxruntime as ort

    _, net = dilated_net
    files = dict(onnx_path=str(tmp_path / "d.onnx"), torchscript=str(tmp_path / "d.ts.pt"),
                 exported_program=str(tmp_path / "d.pt2"))
    report = export.export(net, dynamic_hw=True, check=True, **files)
    kinds = {c[0] for c in report.checks}
    assert kinds == {"onnxruntime", "torchscript", "torch.export"}
    assert report.max_error <= 1e-5, report.checks
    sess = ort.InferenceSession(files["onnx_path"], providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript
        ts = torch.jit.load(files["torchscript"])
    rng = np.random.default_rng(7)
    for shape in [(1, 3, 29, 35), (1, 3, 40, 33), (2, 3, 57, 64)]:
        x = rng.standard_normal(shape).astype(np.float32)
        want = _netspec(net, data=x)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"data": x})))
        assert set(got) == {"prob"}
        assert got["prob"].shape == (shape[0], 7) + shape[2:]
        assert relative_error(got["prob"], want["prob"]) <= 1e-5
        with torch.no_grad():
            (t,) = ts(torch.from_numpy(x))
        assert relative_error(t.numpy(), want["prob"]) <= 1e-5


def test_export_cli_with_caffemodel(dilated_net, tmp_path, capsys):
    _need_onnx()
    path, net = dilated_net
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    tool = _load_tool("export_onnx")
    rc = tool.main(["--model", str(path), "--weights", str(weights), "--out", str(tmp_path / "m.onnx"),
                    "--dynamic-hw", "--opset", "17", "--check"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "check passed" in out and "relative error" in out and "opset 17" in out
    import onnx
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_unexportable_layers_are_named(tmp_path):
    net_text = """
    layer { name: "input" type: "Input" top: "data" top: "label"
            input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
    layer { name: "score" type: "Convolution" bottom: "data" top: "score" convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "pool" type: "Pooling" bottom: "score" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
    """
    p = tmp_path / "train.prototxt"
    p.write_text(net_text)
    with pytest.raises(ExportError, match=r"layer 'loss' \(SoftmaxWithLoss\) is a loss layer"):
        export.export(str(p), onnx_path=str(tmp_path / "x.onnx"), check=False)
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(net_text.replace('top: "label"', "").replace(
        "shape { dim: 1 dim: 1 dim: 8 dim: 8 }", "").split('layer { name: "loss"')[0])
    with pytest.raises(ExportError, match=r"layer 'pool' \(Pooling\) needs ONNX opset >= 10"):
        export.export(str(deploy), onnx_path=str(tmp_path / "x.onnx"), opset=9, check=False)


def test_dynamic_hw_refused_where_caffe_rounding_differs_or_size_is_fixed(tmp_path):
    pool = """
    layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 9 dim: 9 } } }
    layer { name: "sparse" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 1 stride: 3 } }
    """
    p = tmp_path / "pool.prototxt"
    p.write_text(pool)
    with pytest.raises(ExportError, match=r"layer 'sparse' \(Pooling\) cannot be exported with a dynamic H x W"):
        export.check_exportable(Net(str(p), TEST).module, dynamic_hw=True)
    # At a fixed size the netspec module is traced as it is: allowed, with a note.
    _, notes = export.check_exportable(Net(str(p), TEST).module, dynamic_hw=False)
    assert notes and "example input size" in notes[0]


def test_dynamic_hw_with_inner_product_is_refused(tmp_path):
    _need_onnx()
    fc = """
    layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
    layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
    """
    p = tmp_path / "fc.prototxt"
    p.write_text(fc)
    with pytest.raises(ExportError, match="only runs at the example H x W"):
        export.export(str(p), onnx_path=str(tmp_path / "fc.onnx"), dynamic_hw=True, check=False)
    report = export.export(str(p), onnx_path=str(tmp_path / "fc.onnx"), dynamic_hw=False, check=True)
    assert report.dynamic["data"] == [0] and report.max_error <= 1e-5


OPENCV_NET = """
name: "opencv_check"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 38 dim: 46 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "score2" type: "Convolution" bottom: "pool2" top: "score2" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "up2" type: "Deconvolution" bottom: "score2" top: "up2"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 bias_term: false } }
layer { name: "score1" type: "Convolution" bottom: "pool1" top: "score1" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "up2c" type: "Crop" bottom: "up2" bottom: "score1" top: "up2c" crop_param { axis: 2 offset: 1 } }
layer { name: "fuse" type: "Eltwise" bottom: "up2c" bottom: "score1" top: "fuse"
        eltwise_param { operation: SUM coeff: 1 coeff: 0.5 } }
layer { name: "up1" type: "Deconvolution" bottom: "fuse" top: "up1"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 group: 4 } }
layer { name: "crop" type: "Crop" bottom: "up1" bottom: "data" top: "crop" crop_param { axis: 2 offset: 1 offset: 2 } }
layer { name: "cat" type: "Concat" bottom: "crop" bottom: "conv1" top: "cat" concat_param { axis: 1 } }
layer { name: "prob" type: "Softmax" bottom: "cat" top: "prob" }
"""


def test_opencv_dnn_second_opinion(tmp_path):
    """netspec and OpenCV 4's dnn module agree on a caffemodel netspec wrote (conv, relu, ceil pooling MAX and
    AVE with the pad clip, dilation, deconv with groups, Crop, Eltwise with coeffs, Concat, Softmax)."""
    cv2 = pytest.importorskip("cv2")
    proto = tmp_path / "net.prototxt"
    proto.write_text(OPENCV_NET)
    net = Net(str(proto), TEST)
    _randomize(net, 2)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    x = np.random.default_rng(0).standard_normal((1, 3, 38, 46)).astype(np.float32)
    net.forward(data=x)
    # 38 x 46 with kernel 3 stride 2: CEIL gives 19 x 23 where FLOOR would give 18 x 22.
    assert net.blobs["pool1"].data.shape == (1, 6, 19, 23)
    cv = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    if hasattr(cv, "enableWinograd"):
        cv.enableWinograd(False)  # OpenCV's Winograd 3x3 convolution trades ~1e-5 accuracy for speed
    cv.setInput(x)
    # OpenCV's forward() takes layer names: an in-place blob's value is its last layer's output.
    layers = {"relu1": "conv1", "pool1": "pool1", "relu2": "conv2", "pool2": "pool2", "up2": "up2",
              "up2c": "up2c", "fuse": "fuse", "up1": "up1", "crop": "crop", "cat": "cat", "prob": "prob"}
    got = cv.forward(list(layers))
    for (layer, name), g in zip(layers.items(), got):
        want = net.blobs[name].data
        assert g.shape == want.shape, name
        assert relative_error(g, want) <= 1e-5, (name, relative_error(g, want))


def _load_tool(name):
    path = ROOT / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_golden_dilated_fcn2s_deploy_exports_with_dynamic_hw(shared_dir, tmp_path):
    """The reduced Dilated FCN-2s (pad 100, dilation, Scale skips, five Crops named 'Cropping', four
    Eltwise named 'fuse') with Caffe-written weights, its loss layer removed, at two input sizes."""
    _need_onnx()
    from netspec.formats import prototxt
    d = shared_dir / "golden" / "nets" / "dilated_fcn2s_vgg19"
    if not d.is_dir():
        pytest.skip("golden case absent")
    net = prototxt.read_net(str(d / "net.prototxt"))
    layers = [l for l in net.layer if l.type != "SoftmaxWithLoss"]
    del net.layer[:]
    for l in layers:
        layer = net.layer.add()
        layer.CopyFrom(l)
        if layer.type == "Input":  # keep 'data', drop 'label'
            del layer.top[1:]
            del layer.input_param.shape[1:]
    report = export.export(net, weights=str(d / "weights.caffemodel"), onnx_path=str(tmp_path / "d.onnx"),
                           dynamic_hw=True, check=True)
    assert report.dynamic["data"] == [0, 2, 3]
    assert len({c[1] for c in report.checks}) == 2 and report.max_error <= 1e-5, report.checks


def test_relative_error_rules():
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 2e-6])) == pytest.approx(1e-6, rel=1e-3)
    assert relative_error(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 0.0  # NaN in both: agree
    assert relative_error(np.array([np.nan, 1.0]), np.array([0.0, 1.0])) == float("inf")
    assert relative_error(np.zeros((2, 2)), np.zeros((2, 3))) == float("inf")
    assert relative_error(np.array([1e-9]), np.array([0.0])) == pytest.approx(1e-9)


def test_mvn_of_a_constant_input_exports_without_nan(tmp_path):
    # MVN divides by sqrt(var) + eps; a scalar eps of 1e-9 was folded away by the exporter's optimiser, so a
    # constant image (var 0) gave 0/0 = NaN in onnxruntime while Caffe and netspec give 0.
    _need_onnx()
    import onnxruntime as ort
    from google.protobuf import text_format
    from netspec.proto import caffe_pb2
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }\n'
            'layer { name: "mvn" type: "MVN" bottom: "x" top: "y" }')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)
    out = tmp_path / "mvn.onnx"
    export.export(net, onnx_path=str(out), check=False, echo=lambda _l: None)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": np.full((1, 2, 4, 4), 3.0, np.float32)})[0]
    assert np.isfinite(got).all() and np.abs(got).max() == 0


def test_a_forks_bn_with_batch_statistics_is_refused_for_export():
    from google.protobuf import text_format
    from netspec.proto import caffe_pb2
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }\n'
            'layer { name: "bn" type: "BN" bottom: "x" top: "y" bn_param { frozen: false momentum: 0.9 } }')
    from netspec.net.pycaffe import TRAIN
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TRAIN)   # PSPNet's BN, moving averages
    with pytest.raises(ExportError, match=r"layer 'bn' \(BN\) updates its statistics in forward"):
        export.check_exportable(net.module)
    frozen = Net(text_format.Parse(text.replace("false", "true"), caffe_pb2.NetParameter()), TRAIN)
    export.check_exportable(frozen.module)
    bvlc = text.replace('type: "BN"', 'type: "BatchNorm"').replace("bn_param { frozen: false momentum: 0.9 }",
                                                                 "batch_norm_param { use_global_stats: false }")
    with pytest.raises(ExportError, match=r"layer 'bn' \(BatchNorm\) updates its statistics .*use_global_stats: true"):
        export.check_exportable(Net(text_format.Parse(bvlc, caffe_pb2.NetParameter()), TEST).module)
