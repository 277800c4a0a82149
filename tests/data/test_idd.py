"""IDD (Indian Driving Dataset) through the packer and SegDataLayer: a tiny fake IDD_Segmentation tree -> the LMDB
pair -> read back; class weights against a hand count; the errors for bad input; the zoo's IDD nets taking the
packed weights; the zoo's flip / rotation augmentation on an image-label pair."""
import ast
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from netspec.data import packers as P
from netspec.data.datum import decode_datum, parse_datum
from netspec.data.lmdb_io import LMDBReader
from netspec.errors import DataError
from netspec.net.pycaffe import TEST, TRAIN, Net
from netspec.proto import caffe_pb2

H, W = 6, 8
ROAD, SIDEWALK, CAR, BILLBOARD, SKY = 0, 2, 9, 17, 25
STRIPES = (ROAD, CAR, BILLBOARD, SKY)


def _labels():
    """Three label maps (seq 0: two frames, seq 1: one) with counts easy to check by hand."""
    a = np.full((H, W), ROAD, np.uint8)          # 48 px: road 32, sky 16
    a[:2] = SKY
    b = np.full((H, W), SIDEWALK, np.uint8)      # 48 px: sidewalk 40, car 4, void 4
    b[0, :4] = 255
    b[5, :4] = CAR
    c = np.full((H, W), ROAD, np.uint8)          # 48 px: road 24, billboard 24
    c[:, 4:] = BILLBOARD
    return {("0", "000123"): a, ("0", "000456"): b, ("1", "000007"): c}


def make_idd(root: Path, split="train", labels=None, skip_label=()):
    """IDD_Segmentation/leftImg8bit/{split}/{seq}/{id}_leftImg8bit.png + gtFine/.../{id}_gtFine_labellevel3Ids.png"""
    rng = np.random.default_rng(0)
    images = {}
    for (seq, fid), lab in (labels or _labels()).items():
        img_dir = root / "leftImg8bit" / split / seq
        gt_dir = root / "gtFine" / split / seq
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        cv2.imwrite(str(img_dir / f"{fid}_leftImg8bit.png"), img)
        if (seq, fid) not in skip_label:
            cv2.imwrite(str(gt_dir / f"{fid}_gtFine_labellevel3Ids.png"), lab)
        images[(seq, fid)] = img
    return images


def read_back(out):
    imgs, labs = LMDBReader(Path(out) / "images"), LMDBReader(Path(out) / "labels")
    keys = [k.decode() for k in imgs.keys()]
    pairs = [(decode_datum(parse_datum(imgs[i])).transpose(1, 2, 0), decode_datum(parse_datum(labs[i]))[0])
             for i in range(len(imgs))]
    return keys, pairs


def test_pack_reads_back_and_weights_are_the_hand_count(tmp_path):
    images = make_idd(tmp_path / "IDD_Segmentation")
    # ROOT may be IDD_Segmentation or the folder holding it
    s = P.pack("idd", tmp_path, tmp_path / "out", progress=False)
    keys, pairs = read_back(tmp_path / "out")
    assert keys == ["00000000_0_000123", "00000001_0_000456", "00000002_1_000007"]
    for (img, lab), (key, label) in zip(pairs, _labels().items()):
        assert np.array_equal(img, images[key]) and np.array_equal(lab, label)
    # by hand: road 32 + 24 = 56, sidewalk 40, car 4, billboard 24, sky 16 -> 140 labelled pixels, 4 void
    counts = {ROAD: 56, SIDEWALK: 40, CAR: 4, BILLBOARD: 24, SKY: 16}
    assert s["num_classes"] == 26 and s["pixels"] == 144 and s["ignored"] == 4
    assert s["class_pixels"] == [counts.get(c, 0) for c in range(26)]
    want = [1 - counts.get(c, 0) / 140 for c in range(26)]
    assert want[ROAD] == pytest.approx(0.6) and want[CAR] == pytest.approx(1 - 1 / 35)
    np.testing.assert_allclose(s["class_weights"], want)
    np.testing.assert_allclose(np.loadtxt(tmp_path / "out" / "class_weights.txt"), want, atol=1e-6)
    # the loss_param snippet file holds the same weights, ready for a SoftmaxWithLoss layer
    lp = text_format.Parse((tmp_path / "out" / "loss_param.prototxt").read_text(), caffe_pb2.LayerParameter())
    assert lp.loss_param.ignore_label == 255
    np.testing.assert_allclose(lp.loss_param.class_weight, want, atol=1e-6)


def test_summary_names_the_classes_and_says_where_the_weights_go(tmp_path, capsys):
    make_idd(tmp_path / "IDD_Segmentation")
    assert P.main(["idd", str(tmp_path / "IDD_Segmentation"), str(tmp_path / "train"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "packed 3 idd 'train' images" in out and "ignored (255): 4 = 2.78%" in out
    for name in ("road", "drivable fallback", "billboard", "sky"):
        assert f" {name} " in out
    assert out.count("class_weight:") == 26 and str(tmp_path / "train" / "loss_param.prototxt") in out
    assert "data/idd/train/class_weights.txt" in out
    assert "python tools/make_zoo.py --class-weights-from-data unet_idd deeplabv3_resnet101_idd deeplabv3_resnet101_idd_head" in out
    # the validation split's weights feed no loss: no such hint
    make_idd(tmp_path / "IDD_Segmentation", split="val")
    assert P.main(["idd", str(tmp_path / "IDD_Segmentation"), str(tmp_path / "val"), "--split", "val",
                   "--quiet"]) == 0
    assert "make_zoo" not in capsys.readouterr().out


def test_missing_label_names_the_file(tmp_path):
    make_idd(tmp_path, skip_label={("0", "000456")})
    with pytest.raises(DataError) as e:
        P.pack("idd", tmp_path, tmp_path / "out", progress=False)
    assert str(tmp_path / "gtFine" / "train" / "0" / "000456_gtFine_labellevel3Ids.png") in str(e.value)
    assert "does not exist" in str(e.value) and not (tmp_path / "out" / "images").exists()


def test_label_out_of_range_names_the_file_and_value(tmp_path):
    labels = _labels()
    labels[("1", "000007")][3, 3] = 26  # level3Ids stop at 25
    make_idd(tmp_path, labels=labels)
    with pytest.raises(DataError) as e:
        P.pack("idd", tmp_path, tmp_path / "out", progress=False)
    msg = str(e.value)
    assert str(tmp_path / "gtFine" / "train" / "1" / "000007_gtFine_labellevel3Ids.png") in msg
    assert "values 26 outside the IDD level3Id range (0..25 or 255)" in msg


def test_no_images_is_a_clear_error(tmp_path):
    make_idd(tmp_path)
    with pytest.raises(DataError, match=r"idd: no images match '.*leftImg8bit.test"):
        P.pack("idd", tmp_path, tmp_path / "out", split="test", progress=False)
    with pytest.raises(DataError, match="idd: no 'gtFine' in"):
        P.pack("idd", tmp_path / "leftImg8bit", tmp_path / "out", progress=False)


def test_zoo_idd_nets_take_the_packed_weights(tmp_path):
    from netspec.authoring.zoo.deeplab import deeplabv3
    from netspec.authoring.zoo.unet import unet
    make_idd(tmp_path)
    P.pack("idd", tmp_path, tmp_path / "train", progress=False)
    weights = np.loadtxt(tmp_path / "train" / "class_weights.txt")
    for build in (unet, deeplabv3):
        for split in ("train", "val"):
            net = build(split, class_weights=str(tmp_path / "train" / "class_weights.txt"))
            loss = [l for l in net.layer if l.type == "SoftmaxWithLoss"]
            assert len(loss) == 1 and loss[0].loss_param.ignore_label == 255
            assert loss[0].loss_param.normalization == caffe_pb2.LossParameter.VALID
            np.testing.assert_allclose(loss[0].loss_param.class_weight, weights, rtol=1e-6)
    # no packed training split yet: every class weighs 1, the unweighted loss
    loss = [l for l in unet("train", class_weights=str(tmp_path / "none.txt")).layer if l.type == "SoftmaxWithLoss"]
    assert list(loss[0].loss_param.class_weight) == [1.0] * 26
    (tmp_path / "short.txt").write_text("0.5\n0.25\n")
    with pytest.raises(ValueError, match=r"short.txt: 2 class weights for 26 classes"):
        unet("train", class_weights=str(tmp_path / "short.txt"))


def test_zoo_generation_reads_local_weights_only_when_asked(tmp_path, monkeypatch):
    from netspec.authoring.zoo import common
    from netspec.authoring.zoo.unet import unet
    make_idd(tmp_path)
    P.pack("idd", tmp_path, tmp_path / "train", progress=False)
    monkeypatch.setattr(common, "IDD_CLASS_WEIGHTS", str(tmp_path / "train" / "class_weights.txt"))
    weights = np.loadtxt(tmp_path / "train" / "class_weights.txt")

    def loss_weights():
        return list(next(l for l in unet("train").layer if l.type == "SoftmaxWithLoss").loss_param.class_weight)
    assert loss_weights() == [1.0] * 26   # plain generation: the committed files never depend on local data
    monkeypatch.setattr(common, "CLASS_WEIGHTS_FROM_DATA", True)   # make_zoo.py --class-weights-from-data
    np.testing.assert_allclose(loss_weights(), weights, rtol=1e-6)


# -- the zoo's augmentation (flip + rotation) on an image-label pair -----------------------------------------

def _seg_net(tmp_path, phase, source, **params):
    ps = dict(source=str(source), batch_size=1, mean=(0, 0, 0), **params)
    (tmp_path / "seg.prototxt").write_text(
        'layer { name: "data" type: "Python" top: "data" top: "label" python_param { '
        f'module: "netspec.data.seg" layer: "SegDataLayer" param_str: "{repr(ps)}" }} }}\n')
    return Net(str(tmp_path / "seg.prototxt"), phase)


def _pair_dataset(tmp_path, h=33, w=41):
    """One image whose every pixel encodes its label (BGR = 5 * label); the labels are vertical stripes of
    road, car, billboard and sky, far enough apart that an interpolated label could not pass for one."""
    lab = np.tile(np.array(STRIPES, np.uint8)[(np.arange(w) // 5) % len(STRIPES)], (h, 1))
    (tmp_path / "src" / "leftImg8bit" / "train" / "0").mkdir(parents=True)
    (tmp_path / "src" / "gtFine" / "train" / "0").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "src" / "leftImg8bit" / "train" / "0" / "1_leftImg8bit.png"),
                np.repeat(lab[..., None] * 5, 3, axis=2))
    cv2.imwrite(str(tmp_path / "src" / "gtFine" / "train" / "0" / "1_gtFine_labellevel3Ids.png"), lab)
    P.pack("idd", tmp_path / "src", tmp_path / "ds", progress=False)
    return tmp_path / "ds", lab


def _zoo_augmentation(name):
    from netspec.authoring import zoo
    p = ast.literal_eval(zoo.net(name, "train").layer[0].python_param.param_str)
    return {k: p[k] for k in ("mirror", "rotate")}


@pytest.mark.parametrize("name", ["unet_idd", "deeplabv3_resnet101_idd"])
def test_zoo_nets_flip_and_rotate_from_the_prototxt(name):
    assert _zoo_augmentation(name) == {"mirror": True, "rotate": 10}


def test_flip_is_exact_and_pairs_image_and_label(tmp_path):
    source, lab = _pair_dataset(tmp_path)
    net = _seg_net(tmp_path, TRAIN, source, mirror=True, seed=5)
    seen = set()
    for _ in range(8):
        net.forward()
        img, out = net.blobs["data"].data[0], net.blobs["label"].data[0, 0]
        flipped = np.array_equal(out, lab[:, ::-1])
        assert flipped or np.array_equal(out, lab)
        np.testing.assert_array_equal(img, np.repeat(out[None] * 5, 3, axis=0))
        seen.add(flipped)
    assert seen == {True, False}
    test_net = _seg_net(tmp_path, TEST, source, mirror=True, rotate=10)  # TEST: never augmented
    test_net.forward()
    np.testing.assert_array_equal(test_net.blobs["label"].data[0, 0], lab)


def test_rotation_fills_label_corners_with_ignore_and_never_interpolates(tmp_path):
    source, lab = _pair_dataset(tmp_path)
    net = _seg_net(tmp_path, TRAIN, source, **_zoo_augmentation("unet_idd"), seed=3)
    rotated = 0
    for _ in range(8):
        net.forward()
        img, out = net.blobs["data"].data[0], net.blobs["label"].data[0, 0]
        assert out.shape == lab.shape
        assert set(np.unique(out)) <= set(STRIPES) | {255}  # nearest neighbour: no label in between
        border = out == 255
        inside = ~border
        # where the label is a class, the image (bilinear) is close to that class's colour
        assert np.abs(img[0][inside] - 5 * out[inside]).mean() < 5
        if border.any():
            rotated += 1
            assert all(border[y, x] for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)))  # the four corners
    assert rotated >= 6
