"""DenseImageData (SegNet / ENet): image + label image pairs, joint resize / mirror / crop, as the fork's layer."""
import cv2
import numpy as np
import pytest
from google.protobuf import text_format

import netspec
from netspec.errors import NetspecError
from netspec.net.pycaffe import Net
from netspec.proto import caffe_pb2


def make_pairs(tmp_path, n=3, h=6, w=8):
    """Images whose blue channel is 10 * label (so alignment survives flips and crops), labels 0..4."""
    rng = np.random.default_rng(0)
    lines, pairs = [], []
    for i in range(n):
        lab = rng.integers(0, 5, (h, w)).astype(np.uint8)
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        img[:, :, 0] = lab * 10
        cv2.imwrite(str(tmp_path / f"img{i}.png"), img)
        cv2.imwrite(str(tmp_path / f"lab{i}.png"), lab)
        lines.append(f"img{i}.png lab{i}.png")
        pairs.append((img, lab))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return pairs


def net(tmp_path, fields="", batch=2, phase=netspec.TEST, extra=""):
    text = (f'layer {{ name: "d" type: "DenseImageData" top: "data" top: "label" {extra} dense_image_data_param {{ '
            f'source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: {batch} {fields} }} }}')
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def test_reads_pairs_in_order_and_wraps(tmp_path):
    pairs = make_pairs(tmp_path)
    n = net(tmp_path, extra='transform_param { scale: 0.5 mean_value: 1 mean_value: 2 mean_value: 3 }')
    assert n.blobs["data"].shape == (2, 3, 6, 8) and n.blobs["label"].shape == (2, 1, 6, 8)
    seen = []
    for _ in range(3):
        n.forward()
        for i in range(2):
            seen.append((n.blobs["data"].data[i].copy(), n.blobs["label"].data[i, 0].copy()))
    for k, (d, lab) in enumerate(seen):
        img, ref = pairs[k % 3]
        mean = np.float32([1, 2, 3])[:, None, None]
        np.testing.assert_array_equal(d, (img.transpose(2, 0, 1).astype(np.float32) - mean) * np.float32(0.5))
        np.testing.assert_array_equal(lab, ref)   # the label keeps its pixel values: no mean, no scale


def test_resize_bilinear_image_nearest_label_and_divide_factor(tmp_path):
    pairs = make_pairs(tmp_path)
    n = net(tmp_path, "new_height: 12 new_width: 10 label_divide_factor: 2", batch=1)
    assert n.blobs["data"].shape == (1, 3, 12, 10) and n.blobs["label"].shape == (1, 1, 6, 5)
    n.forward()
    img, lab = pairs[0]
    np.testing.assert_array_equal(n.blobs["data"].data[0], cv2.resize(img, (10, 12)).transpose(2, 0, 1))
    np.testing.assert_array_equal(n.blobs["label"].data[0, 0],
                                  cv2.resize(lab, (5, 6), interpolation=cv2.INTER_NEAREST))


def test_mirror_and_crop_keep_image_and_label_aligned(tmp_path):
    make_pairs(tmp_path)
    n = net(tmp_path, "mirror: true crop_height: 4 crop_width: 5 shuffle: true", batch=3, phase=netspec.TRAIN)
    assert n.blobs["data"].shape == (3, 3, 4, 5) and n.blobs["label"].shape == (3, 1, 4, 5)
    for _ in range(4):
        n.forward()
        np.testing.assert_array_equal(n.blobs["data"].data[:, 0], n.blobs["label"].data[:, 0] * 10)


def test_shuffle_visits_every_pair_each_epoch(tmp_path):
    make_pairs(tmp_path)
    n = net(tmp_path, "shuffle: true", batch=3, phase=netspec.TRAIN)
    for _ in range(2):
        n.forward()
        firsts = sorted(int(v) for v in n.blobs["data"].data[:, 1, 0, 0])
        assert len(set(firsts)) == 3


@pytest.mark.parametrize("fields,extra,msg", [
    ("", "transform_param { mirror: true }", "independently"),
    ("new_height: 4", "", "together"),
    ("crop_width: 4", "", "together"),
])
def test_bad_parameters(tmp_path, fields, extra, msg):
    make_pairs(tmp_path)
    with pytest.raises(NetspecError, match=msg):
        net(tmp_path, fields, extra=extra)


def test_odd_list_is_an_error(tmp_path):
    make_pairs(tmp_path)
    (tmp_path / "list.txt").write_text("img0.png lab0.png\nimg1.png\n")
    with pytest.raises(NetspecError, match="list.txt:2: 'img1.png' has no label image"):
        net(tmp_path)
