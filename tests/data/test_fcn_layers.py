"""The built-in FCN data layers (voc_layers, siftflow_layers, nyud_layers, pascalcontext_layers): tiny fake
datasets in the real layouts, read through nets, and the upstream prototxts built unchanged but for their data
directories.

The fake-tree builders here are also used by test_packers.py."""
import logging
import random
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from netspec.data import fcn_layers as F
from netspec.errors import DataError
from netspec.layers import python as pylayer
from netspec.net.pycaffe import TEST, TRAIN, Net

H, W = 20, 30
VOC_MEAN = np.array(F.VOC_MEAN, np.float32)


# -- fake datasets --------------------------------------------------------------------------------------------

def voc_colormap():
    from netspec.tools.infer import voc_palette
    return voc_palette(256)


def write_palette_png(path, idx, filters=(0,)):
    """An 8-bit palette PNG, row y filtered with filters[y % len(filters)] (0 None .. 4 Paeth)."""
    idx = np.asarray(idx, np.uint8)
    h, w = idx.shape
    raw, prev = bytearray(), [0] * w
    for y in range(h):
        f, x = filters[y % len(filters)], idx[y].tolist()
        out = []
        for i in range(w):
            a, b, c = (x[i - 1] if i else 0), prev[i], (prev[i - 1] if i else 0)
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            paeth = a if pa <= pb and pa <= pc else b if pb <= pc else c
            out.append((x[i] - (0, a, b, (a + b) >> 1, paeth)[f]) & 255)
        raw += bytes([f] + out)
        prev = x

    def chunk(t, body):
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body) & 0xFFFFFFFF)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", voc_colormap().tobytes()) + chunk(b"IDAT", zlib.compress(bytes(raw)))
            + chunk(b"IEND", b""))
    Path(path).write_bytes(data)


def _image(rng, path, shape=(H, W)):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    return cv2.imread(str(path), cv2.IMREAD_COLOR)  # what any reader decodes (JPEG is lossy)


def _savemat(path, d):
    scipy_io = pytest.importorskip("scipy.io")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(str(path), d)


def _split(path, ids):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(ids) + "\n")


def make_voc(root, ids=("2007_000032", "2007_000039", "2007_000063"), split="seg11valid", seed=0):
    """VOC layout; returns {id: (bgr uint8, label uint8)}."""
    rng, out = np.random.default_rng(seed), {}
    root = Path(root)
    for k, i in enumerate(ids):
        img = _image(rng, root / "JPEGImages" / f"{i}.jpg")
        lab = rng.integers(0, 21, (H, W)).astype(np.uint8)
        lab[0, :5] = 255
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        write_palette_png(root / "SegmentationClass" / f"{i}.png", lab, filters=(k % 5, 4, 3, 1, 2, 0))
        out[i] = (img, lab)
    _split(root / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
    return out


def make_sbd(root, ids=("2008_000002", "2008_000003", "2008_000007"), split="train", seed=1):
    rng, out = np.random.default_rng(seed), {}
    root = Path(root)
    for i in ids:
        img = _image(rng, root / "img" / f"{i}.jpg")
        lab = rng.integers(0, 21, (H, W)).astype(np.uint8)
        _savemat(root / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": lab, "Boundaries": np.zeros((21, 1), object),
                                                       "CategoriesPresent": np.unique(lab)[1:]}})
        out[i] = (img, lab)
    _split(root / f"{split}.txt", ids)
    return out


def make_siftflow(root, ids=("coast_arnat59", "forest_for15", "street_art256"), split="trainval", seed=2):
    """Returns {id: (bgr, S semantic (0..33), S geometric (-1..3))}."""
    rng, out = np.random.default_rng(seed), {}
    root = Path(root)
    for i in ids:
        img = _image(rng, root / "Images" / F.SIFTFLOW_SUBDIR / f"{i}.jpg")
        sem = rng.integers(0, 34, (H, W)).astype(np.float64)
        geo = rng.integers(-1, 4, (H, W)).astype(np.int16)
        _savemat(root / "SemanticLabels" / F.SIFTFLOW_SUBDIR / f"{i}.mat", {"S": sem})
        _savemat(root / "GeoLabels" / F.SIFTFLOW_SUBDIR / f"{i}.mat", {"S": geo})
        out[i] = (img, sem, geo)
    _split(root / f"{split}.txt", ids)
    return out


def make_nyud(root, ids=("5001", "5002"), split="trainval", seed=3):
    """Returns {id: (bgr, hha as stored (BGR from cv2), depth uint16, segmentation 0..40)}."""
    rng, out = np.random.default_rng(seed), {}
    root = Path(root)
    for i in ids:
        img = _image(rng, root / "data" / "images" / f"img_{i}.png")
        hha = _image(rng, root / "data" / "hha" / f"img_{i}.png")
        depth = rng.integers(1, 10000, (H, W)).astype(np.uint16)
        depth[0, 0] = 0
        (root / "data" / "depth").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "data" / "depth" / f"img_{i}.png"), depth)
        seg = rng.integers(0, 41, (H, W)).astype(np.uint8)
        _savemat(root / "segmentation" / f"img_{i}.mat", {"segmentation": seg})
        out[i] = (img, hha, depth, seg)
    _split(root / f"{split}.txt", ids)
    return out


CONTEXT_400 = ["accordion", "aeroplane", "air conditioner", "bed", "bedclothes", "bird", "cloth", "table", "sky",
               "tv monitor", "window"]
CONTEXT_59 = ["aeroplane", "bedcloth", "bird", "clothes", "diningtable", "sky", "tvmonitor"]


def make_context(root, ids=("2008_000002", "2008_000003"), split="train", seed=4):
    """``root/pascal/VOC2010`` + ``root/pascal-context``; returns {id: (bgr, LabelMap, expected 0..7 label)}."""
    rng, out = np.random.default_rng(seed), {}
    voc, ctx = Path(root) / "pascal" / "VOC2010", Path(root) / "pascal-context"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "labels.txt").write_text("".join(f"{k}: {n}\n" for k, n in enumerate(CONTEXT_400, 1)))
    (ctx / "59_labels.txt").write_text("".join(f"{n}\n" for n in CONTEXT_59))
    # raw label id (1-based in labels.txt) -> class (1-based in 59_labels.txt), others 0
    to59 = {2: 1, 5: 2, 6: 3, 7: 4, 8: 5, 9: 6, 10: 7}
    for i in ids:
        img = _image(rng, voc / "JPEGImages" / f"{i}.jpg")
        lm = rng.integers(0, len(CONTEXT_400) + 1, (H, W)).astype(np.uint16)
        _savemat(ctx / "trainval" / f"{i}.mat", {"LabelMap": lm})
        out[i] = (img, lm, np.vectorize(lambda v: to59.get(int(v), 0))(lm).astype(np.uint8))
    _split(voc / "ImageSets" / "Main" / f"{split}.txt", ids)
    return out


# -- helpers --------------------------------------------------------------------------------------------------

def data_net(tmp_path, module, layer, params, tops=("data", "label"), phase=TRAIN):
    tops_txt = " ".join(f'top: "{t}"' for t in tops)
    text = (f'name: "d" layer {{ name: "data" type: "Python" {tops_txt} python_param {{ module: "{module}" '
            f'layer: "{layer}" param_str: "{params!r}" }} }}')
    path = tmp_path / "data.prototxt"
    path.write_text(text)
    return Net(str(path), phase)


def bgr_chw(img, mean):
    return (img.astype(np.float32) - np.asarray(mean, np.float32)).transpose(2, 0, 1)


# -- PNG palette reader ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (4, 0, 3, 2, 1)])
def test_read_index_png_undoes_every_filter(tmp_path, filters):
    idx = np.random.default_rng(5).integers(0, 256, (H, W)).astype(np.uint8)
    write_palette_png(tmp_path / "l.png", idx, filters)
    assert np.array_equal(F.read_index_png(tmp_path / "l.png"), idx)
    Image = pytest.importorskip("PIL.Image")
    assert np.array_equal(np.array(Image.open(tmp_path / "l.png")), idx)


def test_read_index_png_matches_pil_for_low_bit_depths_and_greyscale(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    idx = np.random.default_rng(6).integers(0, 4, (7, 13)).astype(np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(voc_colormap()[:4].ravel().tolist())
    im.save(tmp_path / "p.png", bits=2)
    assert np.array_equal(F.read_index_png(tmp_path / "p.png"), idx)
    cv2.imwrite(str(tmp_path / "g.png"), idx * 50)
    assert np.array_equal(F.read_index_png(tmp_path / "g.png"), idx * 50)
    cv2.imwrite(str(tmp_path / "c.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="3-channel colour image"):
        F.read_index_png(tmp_path / "c.png")


def test_load_mat_reads_v5_structs_and_v73_hdf5(tmp_path):
    seg = np.arange(6, dtype=np.uint8).reshape(2, 3)
    _savemat(tmp_path / "v5.mat", {"GTcls": {"Segmentation": seg}})
    assert np.array_equal(F.load_mat(tmp_path / "v5.mat", "GTcls", "Segmentation"), seg)
    with pytest.raises(DataError, match="has no variable 'S'"):
        F.load_mat(tmp_path / "v5.mat", "S")
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:     # MATLAB -v7.3: HDF5 behind a 512-byte header
        f.create_group("GTcls")["Segmentation"] = seg.T      # column-major
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file".ljust(116) + bytes(8) + b"\x00\x02IM")
    assert np.array_equal(F.load_mat(path, "GTcls", "Segmentation"), seg)


# -- each layer through a net ---------------------------------------------------------------------------------

def test_voc_layer_sequential_for_val_split_with_wraparound(tmp_path):
    gt = make_voc(tmp_path / "VOC2011")
    params = {"voc_dir": str(tmp_path / "VOC2011"), "seed": 1337, "split": "seg11valid", "mean": F.VOC_MEAN}
    net = data_net(tmp_path, "voc_layers", "VOCSegDataLayer", params, phase=TEST)
    ids = list(gt)
    for i in ids + ids[:1]:
        net.forward()
        img, lab = gt[i]
        assert net.blobs["data"].data.shape == (1, 3, H, W)
        np.testing.assert_allclose(net.blobs["data"].data[0], bgr_chw(img, VOC_MEAN), rtol=0, atol=1e-4)
        assert np.array_equal(net.blobs["label"].data[0, 0], lab)   # palette indices, 255 kept


def test_voc_layer_random_order_is_seeded_randint(tmp_path):
    gt = make_voc(tmp_path / "voc", ids=[f"id{k}" for k in range(6)], split="train")
    params = {"voc_dir": str(tmp_path / "voc"), "seed": 7, "split": "train", "mean": F.VOC_MEAN}
    net = data_net(tmp_path, "voc_layers", "VOCSegDataLayer", params)
    r = random.Random(7)
    for _ in range(5):
        net.forward()
        img, lab = gt[f"id{r.randint(0, 5)}"]
        assert np.array_equal(net.blobs["label"].data[0, 0], lab)
        np.testing.assert_allclose(net.blobs["data"].data[0], bgr_chw(img, VOC_MEAN), atol=1e-4)


@pytest.mark.parametrize("split", ["train", "seg11valid"])
def test_voc_layer_rank_reads_every_worldth_sample_of_the_shared_stream(tmp_path, monkeypatch, split):
    # data parallelism (netspec.data.shard): rank 1 of 3 takes draws 1, 4, 7, ... of the seeded stream
    from netspec.data.shard import Shard
    monkeypatch.setattr(Shard, "current", classmethod(lambda cls, train: cls(1, 3) if train else cls()))
    gt = make_voc(tmp_path / "voc", ids=[f"id{k}" for k in range(6)], split=split)
    params = {"voc_dir": str(tmp_path / "voc"), "seed": 7, "split": split, "mean": F.VOC_MEAN}
    net = data_net(tmp_path, "voc_layers", "VOCSegDataLayer", params)
    r = random.Random(7)
    stream = ([r.randint(0, 5) for _ in range(13)] if split == "train"   # sequential: 'train' not in the name
              else [k % 6 for k in range(13)])
    for j in range(4):
        net.forward()
        assert np.array_equal(net.blobs["label"].data[0, 0], gt[f"id{stream[1 + 3 * j]}"][1])


def test_randomize_string_false_is_random_as_upstream_with_a_warning(tmp_path, caplog):
    gt = make_voc(tmp_path / "voc", ids=[f"id{k}" for k in range(6)], split="train")
    params = {"voc_dir": str(tmp_path / "voc"), "seed": 1337, "split": "train", "randomize": "False",
              "mean": F.VOC_MEAN}
    with caplog.at_level(logging.WARNING, logger="netspec"):
        net = data_net(tmp_path, "voc_layers", "VOCSegDataLayer", params)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "bool('False') is True" in msg and "random" in msg and "'randomize': False (no quotes)" in msg
    r = random.Random(1337)
    for _ in range(4):
        net.forward()
        assert np.array_equal(net.blobs["label"].data[0, 0], gt[f"id{r.randint(0, 5)}"][1])
    # a real boolean False gives the list order
    params["randomize"] = False
    net = data_net(tmp_path, "voc_layers", "VOCSegDataLayer", params)
    for k in range(3):
        net.forward()
        assert np.array_equal(net.blobs["label"].data[0, 0], gt[f"id{k}"][1])


def test_sbdd_layer(tmp_path):
    gt = make_sbd(tmp_path / "sbd")
    params = {"sbdd_dir": str(tmp_path / "sbd"), "seed": 1337, "split": "train", "mean": F.VOC_MEAN}
    net = data_net(tmp_path, "voc_layers", "SBDDSegDataLayer", params)
    net.forward()
    img, lab = gt[list(gt)[random.Random(1337).randint(0, 2)]]
    np.testing.assert_allclose(net.blobs["data"].data[0], bgr_chw(img, VOC_MEAN), atol=1e-4)
    assert np.array_equal(net.blobs["label"].data[0, 0], lab)


def test_siftflow_layer_labels_wrap_zero_to_255(tmp_path):
    gt = make_siftflow(tmp_path / "sift-flow", split="test")
    params = {"siftflow_dir": str(tmp_path / "sift-flow"), "seed": 1337, "split": "test"}
    net = data_net(tmp_path, "siftflow_layers", "SIFTFlowSegDataLayer", params, tops=("data", "sem", "geo"))
    for i in gt:
        net.forward()
        img, sem, geo = gt[i]
        np.testing.assert_allclose(net.blobs["data"].data[0], bgr_chw(img, F.SIFTFLOW_MEAN), atol=1e-4)
        exp_sem = np.where(sem == 0, 255, sem - 1)
        exp_geo = np.where(geo <= 0, 255, geo - 1)
        assert np.array_equal(net.blobs["sem"].data[0, 0], exp_sem)
        assert np.array_equal(net.blobs["geo"].data[0, 0], exp_geo)
        assert set(np.unique(exp_geo)) <= {0, 1, 2, 255}


def test_nyud_layer_all_tops(tmp_path):
    gt = make_nyud(tmp_path / "nyud", split="test")
    params = {"tops": ["color", "depth", "hha", "label"], "seed": 1337, "nyud_dir": str(tmp_path / "nyud"),
              "split": "test"}
    net = data_net(tmp_path, "nyud_layers", "NYUDSegDataLayer", params, tops=("color", "depth", "hha", "label"))
    net.forward()
    img, hha, depth, seg = gt["5001"]
    np.testing.assert_allclose(net.blobs["color"].data[0], bgr_chw(img, F.NYUD_COLOR_MEAN), atol=1e-4)
    # HHA keeps the file's channel order (RGB as PIL reads it): cv2's BGR flipped back
    np.testing.assert_allclose(net.blobs["hha"].data[0], bgr_chw(hha[:, :, ::-1], F.NYUD_HHA_MEAN), atol=1e-4)
    d = net.blobs["depth"].data
    assert d.shape == (1, 1, H, W) and d[0, 0, 0, 0] == -np.inf     # log(0), as upstream
    np.testing.assert_allclose(d[0, 0, 1:], np.log(depth[1:].astype(np.float32)) - 7.844, atol=1e-4)
    assert np.array_equal(net.blobs["label"].data[0, 0], np.where(seg == 0, 255, seg.astype(int) - 1))


def test_pascalcontext_layer_maps_to_59_classes(tmp_path):
    gt = make_context(tmp_path, split="val")
    params = {"context_dir": str(tmp_path / "pascal-context"), "seed": 1337, "split": "val",
              "voc_dir": str(tmp_path / "pascal")}
    net = data_net(tmp_path, "pascalcontext_layers", "PASCALContextSegDataLayer", params)
    for i in gt:
        net.forward()
        img, _, lab = gt[i]
        np.testing.assert_allclose(net.blobs["data"].data[0], bgr_chw(img, F.CONTEXT_MEAN), atol=1e-4)
        assert np.array_equal(net.blobs["label"].data[0, 0], lab)
    assert F.ContextLabels(tmp_path / "pascal-context").names == ["aeroplane", "bedcloth", "bird", "clothes",
                                                                    "diningtable", "sky", "tvmonitor"]


def test_builtin_layers_are_registered_with_the_layers_and_ignore_forbid(tmp_path, monkeypatch):
    # netspec.layers.fcn_data registers them when netspec.layers is imported (no lazy import from python.py,
    # which made an import circle)
    make_voc(tmp_path / "voc")
    monkeypatch.setattr(pylayer, "FORBID", True)     # built-ins import no user code
    net = data_net(tmp_path, "voc_layers", "VOCSegDataLayer",
                   {"voc_dir": str(tmp_path / "voc"), "split": "seg11valid", "mean": F.VOC_MEAN}, phase=TEST)
    assert pylayer.BUILTIN["voc_layers.VOCSegDataLayer"] is F.VOCSegDataLayer
    net.forward()
    assert net.blobs["data"].data.shape == (1, 3, H, W)


# -- errors ---------------------------------------------------------------------------------------------------

def test_missing_listed_file_names_file_and_split_line(tmp_path):
    make_voc(tmp_path / "voc")
    (tmp_path / "voc" / "SegmentationClass" / "2007_000039.png").unlink()
    params = {"voc_dir": str(tmp_path / "voc"), "split": "seg11valid", "mean": F.VOC_MEAN}
    with pytest.raises(DataError) as e:
        data_net(tmp_path, "voc_layers", "VOCSegDataLayer", params, phase=TEST)
    s = str(e.value)
    assert "seg11valid.txt:2 ('2007_000039')" in s and "SegmentationClass/2007_000039.png' does not exist" in s


def test_param_and_setup_errors(tmp_path):
    make_voc(tmp_path / "voc")
    with pytest.raises(DataError, match="split list .*nosuch.txt' not found"):
        data_net(tmp_path, "voc_layers", "VOCSegDataLayer", {"voc_dir": str(tmp_path / "voc"), "split": "nosuch"})
    with pytest.raises(DataError, match="lacks 'voc_dir'"):
        data_net(tmp_path, "voc_layers", "VOCSegDataLayer", {"split": "seg11valid"})
    with pytest.raises(DataError, match="needs 3 tops"):
        data_net(tmp_path, "siftflow_layers", "SIFTFlowSegDataLayer", {"siftflow_dir": "x", "split": "test"})
    with pytest.raises(DataError, match="'tops' must be a list"):
        data_net(tmp_path, "nyud_layers", "NYUDSegDataLayer", {"nyud_dir": "x", "split": "t", "tops": ["rgb"]},
                 tops=("rgb",))


def test_image_label_size_mismatch_names_both_files(tmp_path):
    make_voc(tmp_path / "voc")
    cv2.imwrite(str(tmp_path / "voc" / "JPEGImages" / "2007_000032.jpg"), np.zeros((H + 1, W, 3), np.uint8))
    params = {"voc_dir": str(tmp_path / "voc"), "split": "seg11valid", "mean": F.VOC_MEAN}
    with pytest.raises(DataError, match=r"sizes differ: .*2007_000032.jpg' 21x30, .*2007_000032.png' 20x30"):
        data_net(tmp_path, "voc_layers", "VOCSegDataLayer", params, phase=TEST)


def test_label_values_a_uint8_would_wrap_are_refused(tmp_path):
    gt = make_siftflow(tmp_path / "sf", ids=("a",), split="test")
    _savemat(tmp_path / "sf" / "SemanticLabels" / F.SIFTFLOW_SUBDIR / "a.mat", {"S": np.full((H, W), 300.0)})
    with pytest.raises(DataError, match=r"a.mat' has values in \[300, 300\], outside \[0, 255\]"):
        data_net(tmp_path, "siftflow_layers", "SIFTFlowSegDataLayer", {"siftflow_dir": str(tmp_path / "sf"),
                 "split": "test"}, tops=("data", "sem", "geo"))
    assert gt


# -- the upstream prototxts, unchanged but for the data directories --------------------------------------------

def _upstream(shared_dir, tmp_path, rel, old_dir, new_dir):
    text = (shared_dir / "upstream_prototxt" / "fcn.berkeleyvision.org" / rel).read_text()
    assert old_dir in text
    path = tmp_path / rel.replace("/", "_")
    path.write_text(text.replace(old_dir, str(new_dir)))
    return path


def test_upstream_voc_fcn8s_train_builds_and_feeds_sbd(shared_dir, tmp_path):
    gt = make_sbd(tmp_path / "sbdd" / "dataset")
    net = Net(str(_upstream(shared_dir, tmp_path, "voc-fcn8s/train.prototxt", "../data/sbdd/dataset",
                            tmp_path / "sbdd" / "dataset")), TRAIN)
    ids, r = list(gt), random.Random(1337)      # split 'train', seed 1337: random order
    for _ in range(2):
        net.forward(end="data")
        img, lab = gt[ids[r.randint(0, len(ids) - 1)]]
        assert net.blobs["data"].data.shape == (1, 3, H, W) and net.blobs["label"].data.shape == (1, 1, H, W)
        np.testing.assert_allclose(net.blobs["data"].data[0], bgr_chw(img, F.VOC_MEAN), atol=1e-4)
        assert np.array_equal(net.blobs["label"].data[0, 0], lab)


def test_upstream_siftflow_fcn16s_trainval_builds_and_feeds(shared_dir, tmp_path):
    gt = make_siftflow(tmp_path / "sift-flow", split="trainval")
    net = Net(str(_upstream(shared_dir, tmp_path, "siftflow-fcn16s/trainval.prototxt", "../data/sift-flow",
                            tmp_path / "sift-flow")), TRAIN)
    net.forward(end="data")
    img, sem, geo = gt[list(gt)[random.Random(1337).randint(0, len(gt) - 1)]]
    np.testing.assert_allclose(net.blobs["data"].data[0], bgr_chw(img, F.SIFTFLOW_MEAN), atol=1e-4)
    assert np.array_equal(net.blobs["sem"].data[0, 0], np.where(sem == 0, 255, sem - 1))
    assert np.array_equal(net.blobs["geo"].data[0, 0], np.where(geo <= 0, 255, geo - 1))
