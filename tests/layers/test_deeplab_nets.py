"""The released DeepLab prototxts (tests/data/forks/deeplab, see SOURCES.md) build and run: v1 LargeFOV (V1
format, hole, IMAGE_SEG_DATA, INTERP, SEG_ACCURACY, MAT_WRITE), v2 ASPP VGG16 and ResNet-101 (ImageSegData
with data_dim, Interp, SegAccuracy, MatWrite, Silence), on a tiny generated dataset; training steps; a
DeepLab v2-style ASPP net against OpenCV.

The templates are filled as the releases' run_pascal.sh does (sed of ``${VAR}``), with crop_size and
batch_size lowered so the nets run in a test's time (input 33 = 32k - 31, the releases' alignment rule)."""
import gzip
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import netspec
from netspec.solver.solvers import Solver

HERE = Path(__file__).resolve().parents[1] / "data" / "forks" / "deeplab"


@pytest.fixture
def exper(tmp_path, monkeypatch):
    """A DeepLab experiment directory (the releases run from exper/): dataset, lists, feature dirs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NETSPEC_LOADER_WORKERS", "0")
    data = tmp_path / "dataset"
    (data / "JPEGImages").mkdir(parents=True)
    (data / "SegmentationClassAug").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i, (h, w) in enumerate([(30, 40), (41, 35), (36, 36)]):
        cv2.imwrite(str(data / "JPEGImages" / f"{i}.jpg"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        lab = rng.integers(0, 21, (h, w)).astype(np.uint8)
        lab[:2] = 255
        cv2.imwrite(str(data / "SegmentationClassAug" / f"{i}.png"), lab)
        lines.append(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png")
    for lst in (tmp_path / "voc12" / "list", tmp_path / "exper" / "voc12" / "list"):
        lst.mkdir(parents=True)
        for split in ("train", "val"):
            (lst / f"{split}.txt").write_text("\n".join(lines) + "\n")
            (lst / f"{split}_id.txt").write_text("\n".join(str(i) for i in range(3)) + "\n")
    (tmp_path / "features" / "val" / "fc8").mkdir(parents=True)
    (tmp_path / "voc12" / "config" / "deeplab").mkdir(parents=True)
    (tmp_path / "voc12" / "model" / "deeplab").mkdir(parents=True)
    return tmp_path


def fill(name, exper_dir, crop=33, batch=1):
    """The template as run_pascal.sh's sed leaves it, at a small crop and batch."""
    path = HERE / name
    text = gzip.open(path, "rt").read() if name.endswith(".gz") else path.read_text()
    subs = {"NET_ID": "deeplab", "DATA_ROOT": str(exper_dir / "dataset"), "EXP": "voc12", "TRAIN_SET": "train",
            "TEST_SET": "val", "NUM_LABELS": "21", "FEATURE_DIR": "features", "NET_ROOT": str(exper_dir),
            "LIST_DIR": "voc12/list"}
    for k, v in subs.items():
        text = text.replace("${%s}" % k, v)
    text = re.sub(r"crop_size: \d+", f"crop_size: {crop}", text)
    text = re.sub(r"batch_size: \d+", f"batch_size: {batch}", text)
    out = exper_dir / "voc12" / "config" / "deeplab" / name.replace(".gz", "")
    out.write_text(text)
    return out


def run(path, phase):
    torch.manual_seed(0)
    net = netspec.Net(str(path), phase)
    return net, net.forward()


def test_v1_largefov_train(exper):
    net, out = run(fill("v1_largefov_train.prototxt", exper), netspec.TRAIN)
    assert net.layer_dict["fc6"].type == "Convolution"
    assert net.blobs["fc8_voc12"].data.shape == (1, 21, 5, 5)
    assert net.blobs["label_shrink"].data.shape == (1, 1, 5, 5)
    assert np.isfinite(out["loss"]) and out["accuracy"].shape == (1, 1, 1, 3)


def test_v1_largefov_test_writes_mat_files(exper):
    pytest.importorskip("scipy.io")
    import scipy.io
    net, out = run(fill("v1_largefov_test.prototxt", exper), netspec.TEST)
    assert net.blobs["fc8_interp"].data.shape == (1, 21, 33, 33)
    d = scipy.io.loadmat(str(exper / "features" / "val" / "fc8" / "0_blob_0.mat"))["data"]
    np.testing.assert_array_equal(d.transpose(3, 2, 1, 0), net.blobs["fc8_interp"].data)


def test_v2_vgg16_train(exper):
    net, out = run(fill("v2_vgg16_train.prototxt", exper), netspec.TRAIN)
    assert net.blobs["data_dim"].data.shape == (1, 1, 1, 2)
    assert net.blobs["fc8_voc12"].data.shape == (1, 21, 5, 5)
    assert np.isfinite(out["loss"])


def test_v2_vgg16_test(exper):
    net, out = run(fill("v2_vgg16_test.prototxt", exper), netspec.TEST)
    assert net.blobs["fc8_interp"].data.shape == (1, 21, 33, 33)
    written = (exper / "features" / "val" / "fc8" / "0_blob_0.mat").exists()
    try:
        import scipy.io  # noqa: F401
        assert written
    except ImportError:
        assert not written  # MatWrite without scipy writes nothing


@pytest.mark.slow
@pytest.mark.parametrize("name,phase", [("v2_resnet101_train.prototxt.gz", netspec.TRAIN),
                                        ("v2_resnet101_test.prototxt.gz", netspec.TEST)])
def test_v2_resnet101(exper, name, phase):
    net, out = run(fill(name, exper), phase)
    assert all(np.all(np.isfinite(v)) for v in out.values())
    if phase == netspec.TRAIN:
        assert {"loss", "loss_res05", "loss_res075", "loss_res1"} <= set(out)
        assert net.blobs["data_res075"].data.shape[2:] == (25, 25)  # shrink 4 then zoom 3: (33-1)/4+1 -> 25


def _train(solver_path, iters, init=False):
    torch.manual_seed(0)
    s = Solver(str(solver_path), device="cpu")
    if init:  # the release starts from init.caffemodel: its trunk has no fillers (all zero otherwise)
        rng = np.random.default_rng(0)
        for blobs in s.net.params.values():
            w = blobs[0].data
            if not w.any():
                w[...] = rng.standard_normal(w.shape) * np.sqrt(2.0 / max(1, w[0].size))
    before = {k: [b.data.copy() for b in v] for k, v in s.net.params.items()}
    s.step(iters)
    assert s.iter == iters and np.isfinite(s.smoothed_loss)
    changed = [k for k, v in s.net.params.items() if any(not np.array_equal(a, b.data) for a, b in zip(before[k], v))]
    return s, changed


TINY = """
name: "tiny_deeplab"
layer { name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 17 mean_value: 104 mean_value: 117 mean_value: 123
                    scale_factors: 0.75 scale_factors: 1 }
  image_data_param { root_folder: "dataset" source: "voc12/list/train.txt" batch_size: 2 shuffle: true
                     label_type: PIXEL } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc8_1" type: "Convolution" bottom: "conv1" top: "fc8_1"
  convolution_param { num_output: 21 kernel_size: 3 pad: 2 dilation: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc8_2" type: "Convolution" bottom: "conv1" top: "fc8_2"
  convolution_param { num_output: 21 kernel_size: 3 pad: 4 dilation: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc8" type: "Eltwise" bottom: "fc8_1" bottom: "fc8_2" top: "fc8" eltwise_param { operation: SUM } }
layer { name: "label_shrink" type: "Interp" bottom: "label" top: "label_shrink"
  interp_param { shrink_factor: 2 pad_beg: 0 pad_end: 0 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label_shrink" include { phase: TRAIN }
  loss_param { ignore_label: 255 } }
layer { name: "accuracy" type: "SegAccuracy" bottom: "fc8" bottom: "label_shrink" top: "accuracy"
  seg_accuracy_param { ignore_label: 255 } }
layer { name: "silence" type: "Silence" bottom: "data_dim" }
"""


def test_training_steps_on_a_small_deeplab_v2_net(exper):
    (exper / "tiny.prototxt").write_text(TINY)
    (exper / "solver.prototxt").write_text('train_net: "tiny.prototxt" lr_policy: "poly" power: 0.9 base_lr: 0.01 '
                                           'max_iter: 3 momentum: 0.9 weight_decay: 0.0005 display: 1 '
                                           'snapshot_prefix: "voc12/model/deeplab/train" random_seed: 1')
    s, changed = _train(exper / "solver.prototxt", 3)
    assert set(changed) == {"conv1", "fc8_1", "fc8_2"}
    assert s.net.blobs["label_shrink"].data.shape == (2, 1, 9, 9)


@pytest.mark.slow
def test_training_steps_on_the_released_v2_vgg16(exper):
    fill("v2_vgg16_train.prototxt", exper, batch=2).rename(exper / "voc12" / "config" / "deeplab" /
                                                            "train_train.prototxt")
    solver = fill("v2_vgg16_solver.prototxt", exper)
    s, changed = _train(solver, 3, init=True)
    assert "fc8_voc12_1" in changed and "conv1_1" in changed


@pytest.mark.parametrize("interp,hw", [("zoom_factor: 8", (65, 65)), ("height: 11 width: 7", (11, 7))])
def test_aspp_net_agrees_with_opencv(tmp_path, interp, hw):
    """DeepLab v2's ASPP head (dilated 3x3 branches summed) and its Interp, with random weights, in OpenCV's
    Caffe importer. (OpenCV's Interp differs elsewhere: it fails on shrink_factor alone, takes zoom_factor
    alone when shrink_factor is also set, and ignores pad_beg/pad_end.)"""
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer")
    branches = "".join(
        f'layer {{ name: "fc8_{i}" type: "Convolution" bottom: "pool" top: "fc8_{i}" convolution_param {{ '
        f'num_output: 5 kernel_size: 3 pad: {d} dilation: {d} }} }}\n' for i, d in enumerate((1, 2, 3, 4), 1))
    proto = tmp_path / "aspp.prototxt"
    proto.write_text(
        'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 17 dim: 17 } } }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 6 '
        'kernel_size: 3 pad: 1 } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
        'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 '
        'stride: 2 pad: 1 } }\n' + branches +
        'layer { name: "fc8" type: "Eltwise" bottom: "fc8_1" bottom: "fc8_2" bottom: "fc8_3" bottom: "fc8_4" '
        'top: "fc8" eltwise_param { operation: SUM } }\n'
        'layer { name: "fc8_interp" type: "Interp" bottom: "fc8" top: "fc8_interp" interp_param { %s } }\n' % interp)
    torch.manual_seed(0)
    net = netspec.Net(str(proto), netspec.TEST)
    rng = np.random.default_rng(1)
    for blobs in net.params.values():  # the prototxt has no fillers: random weights and biases
        for b in blobs:
            b.data[...] = rng.standard_normal(b.shape)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    x = np.random.default_rng(0).standard_normal((1, 3, 17, 17)).astype(np.float32)
    ours = net.forward(data=x)["fc8_interp"]
    assert ours.shape == (1, 5) + hw
    cv = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    if hasattr(cv, "enableWinograd"):
        cv.enableWinograd(False)
    cv.setInput(x)
    theirs = cv.forward("fc8_interp")
    assert theirs.shape == ours.shape
    assert np.abs(ours).max() > 1 and np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()
