"""The zoo's ``deeplabv2_vgg16_voc``: its train net is deeplab-public-ver2's released train.prototxt layer for layer
(tests/data/forks/deeplab), val is that net on the val list as the release's test data layer reads it, deploy the
release's test head; the generated files are current; the deploy net's shapes; two training iterations on a
generated DeepLab-layout dataset (VOC2012-style JPEGImages + SegmentationClassAug, a list file)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import netspec
from netspec.formats import prototxt
from netspec.authoring import zoo
from netspec.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[3]
RELEASE = ROOT / "tests" / "data" / "forks" / "deeplab"
NAME = "deeplabv2_vgg16_voc"


def release(name, **subs):
    text = (RELEASE / name).read_text()
    for k, v in dict(NUM_LABELS="21", EXP="voc12", **subs).items():
        text = text.replace("${%s}" % k, v)
    net = prototxt.parse_net(text)
    net.ClearField("name")
    return net


def test_train_is_the_release_layer_for_layer():
    rel = release("v2_vgg16_train.prototxt", DATA_ROOT="data/pascal/VOC2012", TRAIN_SET="train_aug")
    rel.layer[0].image_data_param.source = "data/pascal/deeplab_list/train_aug.txt"  # the release: voc12/list/
    assert zoo.net(NAME, "train") == rel


def test_val_is_train_on_the_val_list_read_as_the_release_tests():
    train, val = zoo.net(NAME, "train"), zoo.net(NAME, "val")
    assert list(val.layer[1:]) == list(train.layer[1:])
    test_data = release("v2_vgg16_test.prototxt", DATA_ROOT="data/pascal/VOC2012", TEST_SET="val").layer[0]
    test_data.image_data_param.source = "data/pascal/deeplab_list/val.txt"
    test_data.image_data_param.label_type = caffe_pb2.ImageDataParameter.PIXEL  # scored: labelled
    assert val.layer[0] == test_data


def test_deploy_is_the_release_test_head():
    deploy = zoo.net(NAME, "deploy")
    rel = release("v2_vgg16_test.prototxt")
    assert [l.type for l in rel.layer[-2:]] == ["MatWrite", "Silence"]
    mine = [caffe_pb2.LayerParameter() for _ in deploy.layer[1:]]
    for m, l in zip(mine, deploy.layer[1:]):
        m.CopyFrom(l)
        m.ClearField("param")  # learning rates and fillers: the release's test net has none
        if m.HasField("convolution_param"):
            m.convolution_param.ClearField("weight_filler")
            m.convolution_param.ClearField("bias_filler")
    assert mine == list(rel.layer[1:-2])
    assert deploy.layer[0].type == "Input" and list(deploy.layer[0].input_param.shape[0].dim) == [1, 3, 513, 513]


def test_committed_files_are_current(tmp_path):
    for rel, text in zoo.files([NAME]).items():
        assert (ROOT / rel).read_text() == text, f"regenerate with `python tools/make_zoo.py {NAME}`"


def test_deploy_shapes():
    net = netspec.Net(zoo.net(NAME, "deploy"), netspec.TEST)
    assert net.blobs["pool5"].shape == (1, 512, 65, 65)
    assert net.blobs["fc8_voc12"].shape == (1, 21, 65, 65)
    assert net.blobs["fc8_interp"].shape == (1, 21, 513, 513)
    assert net.outputs == ["fc8_interp"]


@pytest.mark.slow
def test_trains_two_iterations_on_a_deeplab_layout_dataset(tmp_path, monkeypatch):
    """The committed solver and train net, with the dataset under tmp_path, 33x33 crops (the release's 8k + 1
    rule) and batches of 2; the trunk initialised as the release's init.caffemodel would (He-scaled), so
    gradients reach conv1_1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NETSPEC_LOADER_WORKERS", "0")
    voc = tmp_path / "data" / "pascal" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClassAug").mkdir()
    lists = tmp_path / "data" / "pascal" / "deeplab_list"
    lists.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        cv2.imwrite(str(voc / "JPEGImages" / f"{i}.jpg"), rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
        lab = rng.integers(0, 21, (30, 40)).astype(np.uint8)
        lab[:3] = 255
        cv2.imwrite(str(voc / "SegmentationClassAug" / f"{i}.png"), lab)
        lines.append(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png")
    (lists / "train_aug.txt").write_text("\n".join(lines) + "\n")
    net = prototxt.parse_net((ROOT / "prototxt" / NAME / "train.prototxt").read_text())
    net.layer[0].transform_param.crop_size = 33
    net.layer[0].image_data_param.batch_size = 2
    sp = prototxt.parse_solver((ROOT / "solvers" / f"{NAME}.prototxt").read_text())
    for f in ("train_net", "test_net", "test_iter"):
        sp.ClearField(f)
    sp.train_net_param.CopyFrom(net)
    sp.snapshot_prefix = str(tmp_path / "snap")
    torch.manual_seed(0)
    solver = netspec.get_solver(sp)
    g = np.random.default_rng(1)
    for blobs in solver.net.params.values():
        w = blobs[0].data
        if not w.any():
            w[...] = g.standard_normal(w.shape) * np.sqrt(2.0 / w[0].size)
    before = {k: [b.data.copy() for b in v] for k, v in solver.net.params.items()}
    solver.step(2)
    assert solver.iter == 2 and np.isfinite(solver.smoothed_loss) and solver.smoothed_loss > 0
    assert solver.net.blobs["fc8_voc12"].data.shape == (2, 21, 5, 5)
    assert solver.net.blobs["label_shrink"].data.shape == (2, 1, 5, 5)
    for layer in ("conv1_1", "conv5_3", "fc6_4", "fc8_voc12_1"):
        assert not np.array_equal(before[layer][0], solver.net.params[layer][0].data), layer
