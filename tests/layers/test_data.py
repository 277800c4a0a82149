"""Data layers through the pycaffe-style Net: the golden Caffe Data-layer cases, ImageData, MemoryData,
DummyData, HDF5Data/HDF5Output, prefetching, and the errors users hit."""
import copy
import json
import logging
import pickle

import cv2
import numpy as np
import pytest

import netspec
from netspec.data.datum import encoded_datum, image_to_datum
from netspec.data.lmdb_io import LMDBWriter
from netspec.errors import DataError, LayerError
from netspec.net.pycaffe import Net

CASES = ["raw_scale", "raw_mean_value", "raw_mean_file", "raw_crop_mean_file_scale",
         "raw_crop_single_mean_value", "png_scale_mean_value", "jpeg_plain"]


def write_net(tmp_path, body, name="net.prototxt"):
    p = tmp_path / name
    p.write_text(f'name: "t"\n{body}\n')
    return str(p)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("prefetch", ["1", "0"])
def test_golden_data_case(shared_dir, case, prefetch, monkeypatch):
    """Caffe (TEST phase) ran these; the source paths are relative to the case dir, Caffe's cwd."""
    d = shared_dir / "golden/data" / case
    monkeypatch.chdir(d)
    monkeypatch.setenv("NETSPEC_DATA_PREFETCH", prefetch)
    meta = json.loads((d / "meta.json").read_text())
    ref = np.load(d / "forward.npz")
    net = Net("net.prototxt", netspec.TEST)
    assert net.blobs["data"].shape == tuple(meta["shapes"]["pass0/data"])
    assert net.blobs["label"].shape == tuple(meta["shapes"]["pass0/label"])
    for p in range(2):
        net.forward()
        data, label = net.blobs["data"].data, net.blobs["label"].data
        assert data.dtype == np.float32 and data.shape == ref[f"pass{p}/data"].shape
        assert np.array_equal(label, ref[f"pass{p}/label"])
        if case.startswith("jpeg"):
            # JPEG decoding may differ by libjpeg build; exact with the OpenCV wheel we test with
            assert np.abs(data - ref[f"pass{p}/data"]).max() <= 2.0
        else:
            assert np.array_equal(data, ref[f"pass{p}/data"])


def test_golden_case_from_another_cwd_falls_back_with_warning(shared_dir, tmp_path, monkeypatch, caplog):
    """Caffe looks in the working directory; when only the prototxt's directory has the path, netspec uses
    it and says so."""
    d = shared_dir / "golden/data/raw_crop_mean_file_scale"
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="netspec"):
        net = Net(str(d / "net.prototxt"), netspec.TEST)
    assert "does not exist relative to the working directory" in caplog.text
    assert "mean_file" in caplog.text and "data_param.source" in caplog.text
    net.forward()
    assert np.array_equal(net.blobs["data"].data, np.load(d / "forward.npz")["pass0/data"])


def test_data_module_direct_and_pickle_resumes(shared_dir, monkeypatch):
    d = shared_dir / "golden/data/raw_scale"
    monkeypatch.chdir(d)
    ref = np.load(d / "forward.npz")
    net = Net("net.prototxt", netspec.TEST)
    mod = net.module.get_module(0)
    assert mod.top_shapes([]) == [(3, 3, 8, 9), (3,)]
    data, label = mod()
    assert np.array_equal(data.numpy(), ref["pass0/data"])
    clone = pickle.loads(pickle.dumps(mod))   # read-ahead of the prefetch thread is rewound
    d1, l1 = clone()
    assert np.array_equal(d1.numpy(), ref["pass1/data"]) and np.array_equal(l1.numpy(), ref["pass1/label"])
    d2, _ = copy.deepcopy(mod)()
    assert np.array_equal(d2.numpy(), ref["pass1/data"])
    d3, _ = mod()                             # the original continues where it was
    assert np.array_equal(d3.numpy(), ref["pass1/data"])
    assert "_anchor" not in mod.state_dict()


def test_data_single_top(shared_dir, tmp_path):
    src = shared_dir / "golden/data/dbs/raw_lmdb"
    net = Net(write_net(tmp_path, f'layer {{ name: "d" type: "Data" top: "data" '
                                  f'data_param {{ source: "{src}" batch_size: 2 }} }}'), netspec.TEST)
    net.forward()
    imgs = np.load(shared_dir / "golden/data/dbs/images.npz")
    assert np.array_equal(net.blobs["data"].data, imgs["raw_chw"][:2].astype(np.float32))


def test_train_phase_crop_mirror_deterministic_with_seed(shared_dir, tmp_path):
    src = shared_dir / "golden/data/dbs/raw_lmdb"
    path = write_net(tmp_path, f'layer {{ name: "d" type: "Data" top: "data" top: "label" '
                               f'transform_param {{ crop_size: 5 mirror: true }} '
                               f'data_param {{ source: "{src}" batch_size: 5 }} }}')
    outs = []
    for _ in range(2):
        netspec.set_random_seed(11)
        net = Net(path, netspec.TRAIN)
        net.forward()
        outs.append(net.blobs["data"].data.copy())
    assert outs[0].shape == (5, 3, 5, 5) and np.array_equal(outs[0], outs[1])


def test_missing_lmdb_names_layer_and_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_net(tmp_path, 'layer { name: "d" type: "Data" top: "data" top: "label" '
                               'data_param { source: "no_such_lmdb" batch_size: 2 } }')
    with pytest.raises(DataError, match=r"net.prototxt:2: layer 'd' \(Data\).*LMDB 'no_such_lmdb' not found "
                                        f"\\(working directory {tmp_path}"):
        Net(path, netspec.TEST)


@pytest.mark.parametrize("backend", ["LMDB", "LEVELDB"])
def test_leveldb_source_is_refused(tmp_path, backend):
    ldb = tmp_path / "mnist_train_leveldb"
    ldb.mkdir()
    for n in ("CURRENT", "LOG", "MANIFEST-000004", "000005.ldb"):
        (ldb / n).write_bytes(b"")
    path = write_net(tmp_path, f'layer {{ name: "d" type: "Data" top: "data" '
                               f'data_param {{ source: "{ldb}" batch_size: 2 backend: {backend} }} }}')
    with pytest.raises(DataError, match="LevelDB.*pip install plyvel.*leveldb-to-lmdb"):
        Net(path, netspec.TEST)


def _lmdb_of(tmp_path, datums, name="db"):
    with LMDBWriter(tmp_path / name) as w:
        for i, d in enumerate(datums):
            w.put(f"{i:08d}", d.SerializeToString())
    return tmp_path / name


def test_corrupt_encoded_record_names_key(tmp_path):
    good = encoded_datum(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes(), 1)
    db = _lmdb_of(tmp_path, [good, good, encoded_datum(b"\xff\xd8\xff\xe0 truncated jpeg", 2)])
    net = Net(write_net(tmp_path, f'layer {{ name: "d" type: "Data" top: "data" top: "label" '
                                  f'data_param {{ source: "{db}" batch_size: 2 }} }}'), netspec.TEST)
    net.forward()
    with pytest.raises(DataError, match=r"layer 'd' \(Data\).*record '00000002'.*cannot be decoded"):
        net.forward()


def test_mixed_sizes_in_a_batch(tmp_path):
    db = _lmdb_of(tmp_path, [image_to_datum(np.zeros((4, 4, 3), np.uint8)),
                             image_to_datum(np.zeros((5, 4, 3), np.uint8))])
    net = Net(write_net(tmp_path, f'layer {{ name: "d" type: "Data" top: "data" '
                                  f'data_param {{ source: "{db}" batch_size: 2 }} }}'), netspec.TEST)
    with pytest.raises(DataError, match="record '00000001' gives a 3x5x4 item but this batch's first item is 3x4x4"):
        net.forward()
    # with one item per batch the shape follows each record, as Caffe reshapes per batch
    net = Net(write_net(tmp_path, f'layer {{ name: "d" type: "Data" top: "data" '
                                  f'data_param {{ source: "{db}" batch_size: 1 }} }}', "n1.prototxt"),
              netspec.TEST)
    net.forward()
    assert net.blobs["data"].shape == (1, 3, 4, 4)
    net.forward()
    assert net.blobs["data"].shape == (1, 3, 5, 4)


def test_two_nets_share_one_lmdb(shared_dir, tmp_path):
    src = shared_dir / "golden/data/dbs/raw_lmdb"
    path = write_net(tmp_path, f'layer {{ name: "d" type: "Data" top: "data" '
                               f'data_param {{ source: "{src}" batch_size: 2 }} }}')
    a, b = Net(path, netspec.TEST), Net(path, netspec.TRAIN)
    a.forward()
    b.forward()
    a.forward()
    assert np.array_equal(b.blobs["data"].data, np.load(shared_dir / "golden/data/dbs/images.npz")["raw_chw"][:2])


# ----------------------------------------------------------------------------------------------------------
def _images(tmp_path, n=4, size=(6, 8)):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    imgs, lines = [], []
    for i in range(n):
        im = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), im)
        imgs.append(im)
        lines.append(f"{i}.png {10 + i}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return imgs


def test_image_data(tmp_path, monkeypatch):
    imgs = _images(tmp_path)
    monkeypatch.chdir(tmp_path)
    net = Net(write_net(tmp_path, 'layer { name: "d" type: "ImageData" top: "data" top: "label" '
                                  'transform_param { mean_value: 100 scale: 0.5 } '
                                  'image_data_param { source: "list.txt" root_folder: "img/" batch_size: 3 } }'),
              netspec.TEST)
    assert net.blobs["data"].shape == (3, 3, 6, 8) and net.blobs["label"].shape == (3,)
    seen = []
    for _ in range(2):
        net.forward()
        seen += list(zip(net.blobs["data"].data, net.blobs["label"].data))
    order = [0, 1, 2, 3, 0, 1]  # wraps around
    for (d, l), i in zip(seen, order):
        assert l == 10 + i
        assert np.array_equal(d, (imgs[i].transpose(2, 0, 1).astype(np.float32) - 100) * np.float32(0.5))


def test_image_data_resize_gray_shuffle(tmp_path, monkeypatch):
    imgs = _images(tmp_path)
    monkeypatch.chdir(tmp_path)
    net = Net(write_net(tmp_path, 'layer { name: "d" type: "ImageData" top: "data" top: "label" '
                                  'image_data_param { source: "list.txt" root_folder: "img/" batch_size: 4 '
                                  'new_height: 3 new_width: 5 is_color: false shuffle: true } }'), netspec.TEST)
    net.forward()
    assert net.blobs["data"].shape == (4, 1, 3, 5)
    labels = net.blobs["label"].data
    assert sorted(labels) == [10, 11, 12, 13]
    for d, l in zip(net.blobs["data"].data, labels):
        ref = cv2.resize(cv2.imread(f"img/{int(l) - 10}.png", cv2.IMREAD_GRAYSCALE), (5, 3))
        assert np.array_equal(d[0], ref.astype(np.float32))


def test_image_data_missing_file_names_file_and_line(tmp_path, monkeypatch):
    _images(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_text("0.png 1\n1.png 2\nmissing.png 3\n")
    net = Net(write_net(tmp_path, 'layer { name: "d" type: "ImageData" top: "data" top: "label" '
                                  'image_data_param { source: "list.txt" root_folder: "img/" batch_size: 3 } }'),
              netspec.TEST)
    with pytest.raises(DataError, match=r"layer 'd' \(ImageData\).*list.txt:3: image file 'img/missing.png' "
                                        "not found"):
        net.forward()
    # root_folder without the trailing slash Caffe needs: the error says so
    with pytest.raises(DataError, match="end it with '/'"):
        Net(write_net(tmp_path, 'layer { name: "d" type: "ImageData" top: "data" '
                                'image_data_param { source: "list.txt" root_folder: "img" batch_size: 1 } }',
                      "n2.prototxt"), netspec.TEST)
    (tmp_path / "bad.txt").write_text("0.png x\n")
    with pytest.raises(DataError, match="bad.txt:1: expected '<image path> <integer label>'"):
        Net(write_net(tmp_path, 'layer { name: "d" type: "ImageData" top: "data" '
                                'image_data_param { source: "bad.txt" batch_size: 1 } }', "n3.prototxt"),
            netspec.TEST)


# ----------------------------------------------------------------------------------------------------------
def test_memory_data(tmp_path):
    net = Net(write_net(tmp_path, 'layer { name: "m" type: "MemoryData" top: "data" top: "label" '
                                  'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }'),
              netspec.TEST)
    assert net.blobs["data"].shape == (2, 1, 2, 3)
    with pytest.raises(DataError, match="set_input_arrays"):
        net.forward()
    from netspec.layers.data import set_input_arrays
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    set_input_arrays(net, data, np.array([5, 6, 7, 8]))
    for start in (0, 2, 0):
        net.forward()
        assert np.array_equal(net.blobs["data"].data, data[start:start + 2])
        assert np.array_equal(net.blobs["label"].data, [5 + start, 6 + start])
    mod = net.module.get_module(0)
    with pytest.raises(DataError, match="multiple of batch_size 2"):
        mod.set_input_arrays(data[:3], np.zeros(3))
    with pytest.raises(DataError, match="layer expects channels x height x width = 1x2x3"):
        mod.set_input_arrays(np.zeros((2, 3, 2, 3)), np.zeros(2))
    with pytest.raises(DataError, match="one label per item"):
        mod.set_input_arrays(data, np.zeros(3))


def test_dummy_data(tmp_path):
    net = Net(write_net(tmp_path, '''layer { name: "d" type: "DummyData" top: "a" top: "b" top: "c"
        dummy_data_param { data_filler { type: "constant" value: 3 } data_filler { type: "gaussian" std: 2 }
                           data_filler { type: "uniform" min: 5 max: 6 }
                           shape { dim: 2 dim: 3 } shape { dim: 1000 } shape { dim: 4 dim: 1 dim: 2 } } }'''),
              netspec.TEST)
    assert [net.blobs[k].shape for k in "abc"] == [(2, 3), (1000,), (4, 1, 2)]
    net.forward()
    a, b1, c = (net.blobs[k].data.copy() for k in "abc")
    assert np.all(a == 3) and 1.5 < b1.std() < 2.5 and c.min() >= 5 and c.max() <= 6
    net.forward()
    assert np.all(net.blobs["a"].data == 3) and not np.array_equal(net.blobs["b"].data, b1)  # refilled
    legacy = Net(write_net(tmp_path, 'layer { name: "d" type: "DummyData" top: "x" top: "y" '
                                     'dummy_data_param { num: 2 channels: 3 channels: 1 height: 4 width: 5 } }',
                           "l.prototxt"), netspec.TEST)
    assert legacy.blobs["x"].shape == (2, 3, 4, 5) and legacy.blobs["y"].shape == (2, 1, 4, 5)
    legacy.forward()
    assert not legacy.blobs["x"].data.any()   # no filler: constant 0
    with pytest.raises(LayerError, match="both shape and legacy"):
        Net(write_net(tmp_path, 'layer { name: "d" type: "DummyData" top: "x" dummy_data_param { '
                                'num: 1 shape { dim: 1 } } }', "e.prototxt"), netspec.TEST)


# ----------------------------------------------------------------------------------------------------------
def test_hdf5_data_and_output(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x1, y1 = rng.standard_normal((3, 2, 2, 2)), np.arange(3.0)
    x2, y2 = rng.standard_normal((2, 2, 2, 2)), np.arange(3.0, 5.0)
    for name, x, y in (("a.h5", x1, y1), ("b.h5", x2, y2)):
        with h5py.File(name, "w") as f:
            f["data"] = x
            f["label"] = y
    (tmp_path / "files.txt").write_text("a.h5\nb.h5\n")
    net = Net(write_net(tmp_path, '''
        layer { name: "h" type: "HDF5Data" top: "data" top: "label"
                hdf5_data_param { source: "files.txt" batch_size: 4 } }
        layer { name: "o" type: "HDF5Output" bottom: "data" bottom: "label"
                hdf5_output_param { file_name: "out.h5" } }'''), netspec.TEST)
    assert net.blobs["data"].shape == (4, 2, 2, 2) and net.blobs["label"].shape == (4,)
    allx, ally = np.concatenate([x1, x2]).astype(np.float32), np.concatenate([y1, y2]).astype(np.float32)
    net.forward()
    assert np.array_equal(net.blobs["data"].data, allx[:4]) and np.array_equal(net.blobs["label"].data, ally[:4])
    net.forward()
    idx = [4, 0, 1, 2]  # wraps around the file list
    assert np.array_equal(net.blobs["data"].data, allx[idx]) and np.array_equal(net.blobs["label"].data, ally[idx])
    with h5py.File("out.h5", "r") as f:
        assert np.array_equal(f["data"][()], allx[idx]) and np.array_equal(f["label"][()], ally[idx])
    (tmp_path / "files2.txt").write_text("a.h5\n")
    with pytest.raises(DataError, match="has no dataset 'lbl'"):
        Net(write_net(tmp_path, 'layer { name: "h" type: "HDF5Data" top: "data" top: "lbl" '
                                'hdf5_data_param { source: "files2.txt" batch_size: 1 } }', "e.prototxt"),
            netspec.TEST)


def test_hdf5_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "h5py":
            raise ImportError("no h5py")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(LayerError, match="pip install h5py"):
        Net(write_net(tmp_path, 'layer { name: "h" type: "HDF5Data" top: "data" '
                                'hdf5_data_param { source: "files.txt" batch_size: 1 } }'), netspec.TEST)


def test_batches_follow_module_device_and_threads_end(shared_dir, tmp_path):
    import gc
    import threading
    import time
    src = shared_dir / "golden/data/dbs/raw_lmdb"
    net = Net(write_net(tmp_path, f'layer {{ name: "d" type: "Data" top: "data" top: "label" '
                                  f'data_param {{ source: "{src}" batch_size: 2 }} }}'), netspec.TEST)
    net.forward()

    def ours():
        return [t for t in threading.enumerate() if t.name.startswith("netspec-prefetch") and str(tmp_path) in t.name]
    assert ours()
    mod = net.module.get_module(0)
    mod.to("meta")
    data, label = mod()
    assert data.device.type == "meta" and label.shape == (2,)
    del net, mod, data, label
    gc.collect()
    for _ in range(50):
        if not ours():
            break
        time.sleep(0.1)
    assert not ours()


@pytest.mark.parametrize("layer, fields, message", [
    ("Data", "data_param { source: 'x' batch_size: 0 }", r"data_param\.batch_size must be positive \(got 0\)"),
    ("ImageData", "image_data_param { source: 'x' batch_size: 2 new_height: 8 }",
     r"new_height and new_width must be set together \(got 8 x 0\)"),
    ("ImageSegData", "image_data_param { source: 'x' batch_size: 0 }",
     r"image_data_param\.batch_size must be positive \(got 0\)"),
    ("DenseImageData", "dense_image_data_param { source: 'x' batch_size: 1 crop_width: 4 }",
     r"crop_height and crop_width must be set together \(got 0 x 4\)"),
    ("HDF5Data", "hdf5_data_param { source: 'x' batch_size: 0 }",
     r"hdf5_data_param\.batch_size must be positive \(got 0\)")])
def test_data_layers_refuse_bad_batch_and_size_pairs_before_reading(layer, fields, message):
    from netspec.errors import LayerError
    from netspec.formats import prototxt
    from netspec.net import TEST, Net
    text = f'layer {{ name: "d" type: "{layer}" top: "data" top: "label" {fields} }}'
    with pytest.raises(LayerError, match=rf"layer 'd' \({layer}\): {message}"):
        Net(prototxt.parse_net(text), TEST)
