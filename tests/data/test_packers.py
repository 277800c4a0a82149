"""tools/build_seg_lmdb.py / netspec.data.packers: tiny fake datasets in each real layout -> LMDB pair -> read
back (records, SegDataLayer), summary and class weights, and the errors for bad input."""
import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from netspec.data import packers as P
from netspec.data.datum import decode_datum, parse_datum
from netspec.data.lmdb_io import LMDBReader
from netspec.errors import DataError
from netspec.net.pycaffe import TEST, Net

from test_fcn_layers import (H, W, _image, make_context, make_nyud, make_sbd, make_siftflow, make_voc,
                             write_palette_png)

ROOT = Path(__file__).resolve().parents[2]


def read_pack(out):
    imgs, labs = LMDBReader(Path(out) / "images"), LMDBReader(Path(out) / "labels")
    assert imgs.keys() == labs.keys()
    pairs = []
    for k in range(len(imgs)):
        img = decode_datum(parse_datum(imgs[k]))
        lab = decode_datum(parse_datum(labs[k]))
        assert img.shape == (3, H, W) and lab.shape == (1, H, W)
        pairs.append((img.transpose(1, 2, 0), lab[0]))
    return [k.decode() for k in imgs.keys()], pairs


def check(summary, out, expected, num_classes):
    """expected: [(id, bgr, label)] in order."""
    keys, pairs = read_pack(out)
    assert keys == [f"{n:08d}_{i}" for n, (i, _, _) in enumerate(expected)]
    counts = np.zeros(num_classes, np.int64)
    for (img, lab), (_, e_img, e_lab) in zip(pairs, expected):
        assert np.array_equal(img, e_img)          # PNG: the decoded source pixels, unchanged
        assert np.array_equal(lab, e_lab)
        counts += np.bincount(e_lab[e_lab != 255].ravel(), minlength=num_classes)[:num_classes]
    ignored = sum(int((e == 255).sum()) for _, _, e in expected)
    assert summary["images"] == len(expected) and summary["num_classes"] == num_classes
    assert summary["class_pixels"] == counts.tolist() and summary["ignored"] == ignored
    assert summary["pixels"] == len(expected) * H * W
    w = 1 - counts / counts.sum()
    np.testing.assert_allclose(summary["class_weights"], w)
    np.testing.assert_allclose(np.loadtxt(Path(out) / "class_weights.txt"), w, atol=1e-6)


def void_shift(a):
    a = np.asarray(a).astype(np.int64)
    return np.where(a == 0, 255, a - 1).astype(np.uint8)


# -- each dataset -----------------------------------------------------------------------------------------------

def test_voc(tmp_path):
    gt = make_voc(tmp_path / "VOCdevkit" / "VOC2012", split="train")
    s = P.pack("voc", tmp_path / "VOCdevkit", tmp_path / "out", "train", progress=False)
    check(s, tmp_path / "out", [(i, img, lab) for i, (img, lab) in gt.items()], 21)
    assert s["class_names"][15] == "person"


def test_voc_with_sbd_is_train_aug(tmp_path):
    voc = make_voc(tmp_path / "VOC2012", ids=("a", "b"), split="train")
    make_voc(tmp_path / "VOC2012", ids=("v",), split="val", seed=9)
    sbd = make_sbd(tmp_path / "sbd" / "dataset", ids=("b", "c", "v"), split="train")
    sbd.update(make_sbd(tmp_path / "sbd" / "dataset", ids=("d",), split="val", seed=8))
    s = P.pack("voc", tmp_path / "VOC2012", tmp_path / "out", "train", sbd=str(tmp_path / "sbd"), progress=False)
    # VOC's own label wins for b; SBD's v is VOC val and stays out
    expected = [("a", *voc["a"]), ("b", *voc["b"]), ("c", *sbd["c"]), ("d", *sbd["d"])]
    check(s, tmp_path / "out", expected, 21)
    assert "SBD added 2 images" in s["notes"][0]
    with pytest.raises(DataError, match="validation split"):
        P.pack("voc", tmp_path / "VOC2012", tmp_path / "o2", "val", sbd=str(tmp_path / "sbd"), progress=False)


def test_sbd(tmp_path):
    gt = make_sbd(tmp_path / "benchmark_RELEASE" / "dataset")
    s = P.pack("sbd", tmp_path / "benchmark_RELEASE", tmp_path / "out", progress=False)
    check(s, tmp_path / "out", [(i, img, lab) for i, (img, lab) in gt.items()], 21)


def test_ade20k(tmp_path):
    root, rng, expected = tmp_path / "ADEChallengeData2016", np.random.default_rng(0), []
    for k in (1, 2):
        stem = f"ADE_val_{k:08d}"
        img = _image(rng, root / "images" / "validation" / f"{stem}.jpg")
        raw = rng.integers(0, 151, (H, W)).astype(np.uint8)
        raw[0, 0], raw[0, 1] = 0, 150
        (root / "annotations" / "validation").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "annotations" / "validation" / f"{stem}.png"), raw)
        expected.append((stem, img, void_shift(raw)))
    s = P.pack("ade20k", tmp_path, tmp_path / "out", "val", progress=False)
    check(s, tmp_path / "out", expected, 150)
    assert expected[0][2][0, 0] == 255 and expected[0][2][0, 1] == 149
    assert not (tmp_path / "out" / "class_names.txt").exists()  # no objectInfo150: no names
    # the release's objectInfo150.csv (Idx,Ratio,Train,Val,Name; names with synonyms) gives the 150 names
    rows = ["Idx,Ratio,Train,Val,Name"] + [f'{k},0.01,10,1,"name{k};synonym{k}"' for k in range(1, 151)]
    (root / "objectInfo150.csv").write_text("\n".join(rows) + "\n")
    s = P.pack("ade20k", tmp_path, tmp_path / "out2", "val", progress=False)
    assert s["class_names"][:2] == ["name1", "name2"] and len(s["class_names"]) == 150
    assert (tmp_path / "out2" / "class_names.txt").read_text().splitlines()[149] == "name150"


def test_cityscapes(tmp_path):
    rng, expected = np.random.default_rng(1), []
    lut = dict(enumerate(P.CITYSCAPES_TRAIN_ID))
    assert [k for k, v in lut.items() if v != 255] == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                                       31, 32, 33]
    for city, n in (("aachen", "000000_000019"), ("bochum", "000001_000020")):
        base = f"{city}_{n}"
        img = _image(rng, tmp_path / "leftImg8bit" / "train" / city / f"{base}_leftImg8bit.png")
        raw = rng.integers(0, 34, (H, W)).astype(np.uint8)
        (tmp_path / "gtFine" / "train" / city).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "gtFine" / "train" / city / f"{base}_gtFine_labelIds.png"), raw)
        expected.append((base, img, np.vectorize(lut.get)(raw).astype(np.uint8)))
    s = P.pack("cityscapes", tmp_path, tmp_path / "out", "train", progress=False)
    check(s, tmp_path / "out", expected, 19)


def test_kitti_road(tmp_path):
    rng, expected = np.random.default_rng(2), []
    tr = tmp_path / "data_road" / "training"
    colours = np.array([[0, 0, 255], [255, 0, 255], [0, 0, 0]], np.uint8)   # BGR: red non-road, magenta road, black
    for stem in ("um_000000", "uu_000003"):
        img = _image(rng, tr / "image_2" / f"{stem}.png")
        which = rng.integers(0, 3, (H, W))
        cat, num = stem.split("_")
        (tr / "gt_image_2").mkdir(exist_ok=True)
        cv2.imwrite(str(tr / "gt_image_2" / f"{cat}_road_{num}.png"), colours[which])
        cv2.imwrite(str(tr / "gt_image_2" / f"{cat}_lane_{num}.png"), colours[which] * 0)   # ignored
        expected.append((stem, img, np.array([0, 1, 255], np.uint8)[which]))
    s = P.pack("kitti-road", tmp_path / "data_road", tmp_path / "out", progress=False)
    check(s, tmp_path / "out", expected, 2)
    with pytest.raises(DataError, match="no ground truth"):
        P.pack("kitti-road", tmp_path / "data_road", tmp_path / "o2", "test", progress=False)


def test_nyud(tmp_path):
    gt = make_nyud(tmp_path / "nyud", split="train")
    s = P.pack("nyud", tmp_path / "nyud", tmp_path / "out", progress=False)
    check(s, tmp_path / "out", [(i, img, void_shift(seg)) for i, (img, _, _, seg) in gt.items()], 40)


def test_pascal_context_60_and_59(tmp_path):
    gt = make_context(tmp_path)
    s = P.pack("pascal-context", tmp_path / "pascal-context", tmp_path / "out", progress=False)
    check(s, tmp_path / "out", [(i, img, lab) for i, (img, _, lab) in gt.items()], 8)   # fake 7 classes + bg
    assert s["class_names"][:3] == ["background", "aeroplane", "bedcloth"]
    s = P.pack("pascal-context", tmp_path / "pascal-context", tmp_path / "o59", ignore_background=True,
               voc_dir=str(tmp_path / "pascal"), progress=False)
    check(s, tmp_path / "o59", [(i, img, void_shift(lab)) for i, (img, _, lab) in gt.items()], 7)


@pytest.mark.parametrize("target", ["semantic", "geometric"])
def test_siftflow(tmp_path, target):
    gt = make_siftflow(tmp_path / "sift-flow")
    s = P.pack("siftflow", tmp_path / "sift-flow", tmp_path / "out", "trainval", target=target, progress=False)
    if target == "semantic":
        expected = [(i, img, void_shift(sem)) for i, (img, sem, _) in gt.items()]
    else:
        expected = [(i, img, void_shift(np.maximum(geo, 0))) for i, (img, _, geo) in gt.items()]
    check(s, tmp_path / "out", expected, 33 if target == "semantic" else 3)


# -- read back through SegDataLayer -----------------------------------------------------------------------------

def test_pack_feeds_seg_data_layer(tmp_path):
    gt = make_voc(tmp_path / "VOC2012", split="val")
    P.pack("voc", tmp_path / "VOC2012", tmp_path / "out", "val", progress=False)
    proto = tmp_path / "net.prototxt"
    proto.write_text('layer { name: "data" type: "Python" top: "data" top: "label" python_param { '
                     'module: "netspec.data.seg" layer: "SegDataLayer" '
                     f'param_str: "{{\'source\': \'{tmp_path / "out"}\'}}" }} }}')
    net = Net(str(proto), TEST)
    for img, lab in gt.values():
        net.forward()
        np.testing.assert_allclose(net.blobs["data"].data[0],
                                   img.transpose(2, 0, 1).astype(np.float32) - np.float32(
                                       [[[104.00699]], [[116.66877]], [[122.67892]]]), atol=1e-4)
        assert np.array_equal(net.blobs["label"].data[0, 0], lab)


# -- bad input ------------------------------------------------------------------------------------------------------

def test_missing_listed_file_names_it_and_the_list_line(tmp_path):
    make_voc(tmp_path / "VOC2012", split="train")
    (tmp_path / "VOC2012" / "JPEGImages" / "2007_000063.jpg").unlink()
    with pytest.raises(DataError) as e:
        P.pack("voc", tmp_path / "VOC2012", tmp_path / "out", progress=False)
    assert "ImageSets/Segmentation/train.txt:3: '" in str(e.value) and "2007_000063.jpg' does not exist" in str(e.value)
    assert not (tmp_path / "out" / "images").exists()


def test_size_mismatch_and_out_of_range_labels_are_refused_atomically(tmp_path):
    make_voc(tmp_path / "VOC2012", split="train")
    seg = tmp_path / "VOC2012" / "SegmentationClass"
    write_palette_png(seg / "2007_000039.png", np.zeros((H, W + 2), np.uint8))
    with pytest.raises(DataError, match=r"train.txt:2: image .*2007_000039.jpg' is 20x30 but label .*' is 20x32"):
        P.pack("voc", tmp_path / "VOC2012", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "images").exists() and not (tmp_path / "out" / "labels").exists()
    assert not list((tmp_path / "out").glob("*.partial"))
    bad = np.zeros((H, W), np.uint8)
    bad[3, 4], bad[5, 6] = 21, 40
    write_palette_png(seg / "2007_000039.png", bad)
    with pytest.raises(DataError, match=r"2007_000039.png' has values 21, 40 outside the VOC class range \(0..20 or "
                                        r"255\)"):
        P.pack("voc", tmp_path / "VOC2012", tmp_path / "out", progress=False)


def test_out_of_range_in_mat_and_png_datasets(tmp_path):
    gt = make_nyud(tmp_path / "nyud", split="train")
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(str(tmp_path / "nyud" / "segmentation" / f"img_{list(gt)[0]}.mat"),
                     {"segmentation": np.full((H, W), 41, np.uint8)})
    with pytest.raises(DataError, match=r"has values 41 outside the NYUDv2 40-class"):
        P.pack("nyud", tmp_path / "nyud", tmp_path / "out", progress=False)
    root = tmp_path / "cs"
    _image(np.random.default_rng(0), root / "leftImg8bit" / "val" / "x" / "x_1_2_leftImg8bit.png")
    (root / "gtFine" / "val" / "x").mkdir(parents=True)
    cv2.imwrite(str(root / "gtFine" / "val" / "x" / "x_1_2_gtFine_labelIds.png"), np.full((H, W), 34, np.uint8))
    with pytest.raises(DataError, match="values 34 outside the Cityscapes labelId range"):
        P.pack("cityscapes", root, tmp_path / "o2", "val", progress=False)


def test_existing_output_needs_overwrite(tmp_path):
    make_voc(tmp_path / "VOC2012", split="train")
    P.pack("voc", tmp_path / "VOC2012", tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="already exists; remove it or pass --overwrite"):
        P.pack("voc", tmp_path / "VOC2012", tmp_path / "out", progress=False)
    s = P.pack("voc", tmp_path / "VOC2012", tmp_path / "out", overwrite=True, limit=2, progress=False)
    assert s["images"] == 2 and len(LMDBReader(tmp_path / "out" / "labels")) == 2


# -- the tool -------------------------------------------------------------------------------------------------------

def test_cli_prints_summary_and_loss_param_snippet(tmp_path, capsys):
    make_voc(tmp_path / "VOC2012", split="train")
    assert P.main(["voc", str(tmp_path / "VOC2012"), str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "packed 3 voc 'train' images" in out and "ignored (255): 15 = 0.83%" in out
    assert "loss_param {\n  ignore_label: 255\n  class_weight: " in out and out.count("class_weight:") == 21
    assert "person" in out
    assert P.main(["voc", str(tmp_path / "nowhere"), str(tmp_path / "o2"), "--quiet"]) == 1
    assert "build_seg_lmdb: error: voc: dataset root '" in capsys.readouterr().err
    assert P.main(["voc", str(tmp_path / "out"), str(tmp_path / "o2"), "--quiet"]) == 1
    assert "build_seg_lmdb: error: voc: no 'JPEGImages' in '" in capsys.readouterr().err
    # the snippet parses as a LayerParameter's loss_param with one weight per class
    from netspec.proto import caffe_pb2
    from google.protobuf import text_format
    w = np.loadtxt(tmp_path / "out" / "class_weights.txt")
    lp = text_format.Parse(P.loss_param_snippet(w), caffe_pb2.LayerParameter())
    np.testing.assert_allclose(lp.loss_param.class_weight, w, atol=1e-6)


def test_tool_script_runs(tmp_path, monkeypatch, capsys):
    make_sbd(tmp_path / "sbd")
    monkeypatch.setattr(sys, "argv", ["build_seg_lmdb.py", "sbd", str(tmp_path / "sbd"), str(tmp_path / "out"),
                                      "--split", "train", "--quiet"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "tools" / "build_seg_lmdb.py"), run_name="__main__")
    assert e.value.code == 0
    assert "class_weight:" in capsys.readouterr().out and (tmp_path / "out" / "images" / "data.mdb").exists()
