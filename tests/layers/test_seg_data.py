"""ImageSegData (DeepLab): list parsing, label types, padding/crop/mirror/scale of image and label together,
data_dim, errors; expected values worked out from DeepLab's TransformImgAndSeg by hand."""
import cv2
import numpy as np
import pytest
import torch

import netspec
from netspec.errors import DataError, LayerError
from netspec.layers.seg_data import SegTransformer
from netspec.proto import caffe_pb2

MEAN = (104.0, 117.0, 123.0)


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_set(root, sizes=((5, 7), (6, 4)), label=True):
    """Images (PNG) and label images under ``root``; returns the list of (img, lab) arrays."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "seg").mkdir(exist_ok=True)
    items, lines = [], []
    for i, (h, w) in enumerate(sizes):
        img = _img(h, w, i)
        lab = (np.arange(h * w).reshape(h, w) % 21).astype(np.uint8)
        lab[0, 0] = 255
        cv2.imwrite(str(root / "img" / f"{i}.png"), img)
        cv2.imwrite(str(root / "seg" / f"{i}.png"), lab)
        items.append((img, lab))
        lines.append(f"/img/{i}.png /seg/{i}.png" if label else f"/img/{i}.png")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return items


def seg_net(root, phase="TRAIN", transform="", param="label_type: PIXEL", tops=3, batch=1):
    names = ["data", "label", "data_dim"][:tops]
    top = " ".join(f'top: "{t}"' for t in names)
    return (f'layer {{ name: "d" type: "ImageSegData" {top} include {{ phase: {phase} }} '
            f'transform_param {{ {transform} }} image_data_param {{ root_folder: "{root}" source: '
            f'"{root}/list.txt" batch_size: {batch} {param} }} }}\n')


def build(tmp_path, text, phase):
    p = tmp_path / "net.prototxt"
    p.write_text(text)
    return netspec.Net(str(p), phase)


@pytest.fixture(autouse=True)
def inline_loading(monkeypatch):
    monkeypatch.setenv("NETSPEC_LOADER_WORKERS", "0")


def test_test_phase_pads_with_mean_and_ignore_then_centre_crops(tmp_path):
    (img, lab), _ = make_set(tmp_path)
    mv = " ".join(f"mean_value: {m}" for m in MEAN)
    net = build(tmp_path, seg_net(tmp_path, "TEST", f"crop_size: 9 {mv} scale: 0.5"), netspec.TEST)
    out = net.forward()
    data, label, dim = out["data"], out["label"], out["data_dim"]
    assert data.shape == (1, 3, 9, 9) and label.shape == (1, 1, 9, 9) and dim.shape == (1, 1, 1, 2)
    # 5x7 padded to 9x9 at the bottom/right: the centre crop of a 9x9 image is all of it
    want = np.zeros((3, 9, 9), np.float32)
    want[:, :5, :7] = (img.transpose(2, 0, 1).astype(np.float32) - np.float32(MEAN)[:, None, None]) * 0.5
    np.testing.assert_array_equal(data[0], want)
    wl = np.full((9, 9), 255, np.float32)
    wl[:5, :7] = lab
    np.testing.assert_array_equal(label[0, 0], wl)
    np.testing.assert_array_equal(dim[0, 0, 0], [5, 7])


def test_train_crop_is_shared_by_image_and_label(tmp_path):
    items = make_set(tmp_path, sizes=((12, 10),))
    img, lab = items[0]
    net = build(tmp_path, seg_net(tmp_path, "TRAIN", "crop_size: 4 mirror: true"), netspec.TRAIN)
    seen_flip = seen_plain = False
    for _ in range(12):
        out = net.forward()
        d, l = out["data"][0], out["label"][0, 0]
        # find the crop offset from the label (values are position-coded)
        hits = [(y, x, f) for y in range(12 - 3) for x in range(10 - 3) for f in (False, True)
                if np.array_equal((lab[y:y + 4, x:x + 4][:, ::-1] if f else lab[y:y + 4, x:x + 4]), l)]
        ok = [(y, x, f) for y, x, f in hits
              if np.array_equal(d, (img[y:y + 4, x:x + 4].transpose(2, 0, 1)[:, :, ::-1] if f
                                    else img[y:y + 4, x:x + 4].transpose(2, 0, 1)).astype(np.float32))]
        assert ok, "data and label must come from the same crop and flip"
        seen_flip |= any(f for _, _, f in ok)
        seen_plain |= any(not f for _, _, f in ok)
        np.testing.assert_array_equal(out["data_dim"][0, 0, 0], [4, 4])  # min(crop, image size)
    assert seen_flip and seen_plain


def test_label_types_none_and_image(tmp_path):
    make_set(tmp_path, label=False)
    net = build(tmp_path, seg_net(tmp_path, "TEST", "crop_size: 8", "label_type: NONE ignore_label: 254"),
                netspec.TEST)
    np.testing.assert_array_equal(net.forward()["label"], 254)
    (tmp_path / "list.txt").write_text("/img/0.png 7\n/img/1.png 300\n")
    net = build(tmp_path, seg_net(tmp_path, "TEST", "crop_size: 8", "") , netspec.TEST)  # IMAGE: the default
    lab = net.forward()["label"][0, 0]
    assert set(np.unique(lab)) == {7, 255}  # the value, and ignore_label where padded
    assert set(np.unique(net.forward()["label"])) == {255}  # 300 saturates to 255 (cv::Scalar into 8 bits)


def test_two_tops_batch_and_wraparound_without_crop(tmp_path):
    make_set(tmp_path, sizes=((5, 7), (5, 7), (5, 7)))
    net = build(tmp_path, seg_net(tmp_path, "TEST", tops=2, batch=2), netspec.TEST)
    assert set(net.blobs) == {"data", "label"}
    assert net.forward()["data"].shape == (2, 3, 5, 7)
    out = net.forward()  # lines 3 and 1 (wrap-around)
    ref = _img(5, 7, 0).transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(out["data"][1], ref)


def test_without_crop_every_image_needs_the_first_size(tmp_path):
    make_set(tmp_path)  # 5x7 then 6x4
    net = build(tmp_path, seg_net(tmp_path, "TEST"), netspec.TEST)
    net.forward()
    with pytest.raises(DataError, match="first image's size"):
        net.forward()


def test_scale_factors_resize_image_linear_and_label_nearest():
    p = caffe_pb2.TransformationParameter(scale_factors=[2.0])
    t = SegTransformer(p, caffe_pb2.TEST, 255)
    img = _img(3, 5)
    seg = (np.arange(15).reshape(3, 5)).astype(np.uint8)
    data, label = np.empty((3, 6, 10), np.float32), np.empty((1, 6, 10), np.float32)
    t.img_and_seg(img, seg, data, label, None)
    np.testing.assert_array_equal(data, cv2.resize(img, (10, 6), interpolation=cv2.INTER_LINEAR)
                                  .transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(label[0], np.repeat(np.repeat(seg, 2, 0), 2, 1))


def test_crop_height_and_width(tmp_path):
    make_set(tmp_path)
    net = build(tmp_path, seg_net(tmp_path, "TEST", "crop_height: 3 crop_width: 6"), netspec.TEST)
    out = net.forward()
    assert out["data"].shape == (1, 3, 3, 6) and out["label"].shape == (1, 1, 3, 6)
    img = _img(5, 7, 0)
    np.testing.assert_array_equal(out["data"][0], img[1:4, 0:6].transpose(2, 0, 1).astype(np.float32))


@pytest.mark.parametrize("transform,param,exc,msg", [
    ('mean_file: "m.binaryproto"', "", DataError, "mean_file"),
    ("crop_size: 3 crop_height: 3 crop_width: 3", "", DataError, "crop_size or both"),
    ("crop_height: 3", "", DataError, "crop_size or both"),
    ("", "batch_size: 0", LayerError, "batch_size"),
    ("", "new_height: 4", LayerError, "new_height and new_width"),
])
def test_bad_parameters(tmp_path, transform, param, exc, msg):
    make_set(tmp_path)
    batch = 0 if param == "batch_size: 0" else 1
    text = seg_net(tmp_path, "TEST", transform, "label_type: PIXEL " + param.replace("batch_size: 0", ""), batch=batch)
    with pytest.raises(exc, match=msg):
        build(tmp_path, text, netspec.TEST)


def test_label_image_of_another_size_is_an_error(tmp_path):
    make_set(tmp_path)
    cv2.imwrite(str(tmp_path / "seg" / "0.png"), np.zeros((3, 3), np.uint8))
    with pytest.raises(DataError, match="label image"):
        build(tmp_path, seg_net(tmp_path, "TEST", "crop_size: 8"), netspec.TEST).forward()


def test_worker_batches_equal_inline_batches(tmp_path, monkeypatch):
    make_set(tmp_path, sizes=((9, 9), (8, 10), (10, 8)))
    text = seg_net(tmp_path, "TRAIN", "crop_size: 6 mirror: true scale_factors: 0.8 scale_factors: 1.2", batch=2)
    runs = []
    for workers in ("0", "2"):
        monkeypatch.setenv("NETSPEC_LOADER_WORKERS", workers)
        torch.manual_seed(5)
        net = build(tmp_path, text, netspec.TRAIN)
        runs.append([{k: v.copy() for k, v in net.forward().items()} for _ in range(3)])
    for a, b in zip(*runs):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
