"""LMDB reading (Caffe-written golden DBs), wrap-around cursor, atomic writer, convert_imageset and
compute_image_mean, and the errors for missing / LevelDB / unfinished databases."""
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from netspec.data import datum as D
from netspec.data.lmdb_io import (LMDBReader, LMDBWriter, WrapCursor, check_lmdb, compute_image_mean,
                                  convert_imageset, is_leveldb)
from netspec.errors import DataError
from netspec.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[2]
KEYS = [f"{i:08d}".encode() for i in range(5)]


@pytest.fixture(scope="module")
def dbs(shared_dir):
    return shared_dir / "golden/data/dbs"


def test_golden_raw_lmdb_reads_back(dbs):
    imgs = np.load(dbs / "images.npz")
    r = LMDBReader(dbs / "raw_lmdb")
    assert len(r) == 5 and r.keys() == KEYS
    for i in range(5):
        d = r.datum(i)
        assert d.label == imgs["labels"][i]
        assert np.array_equal(D.decode_datum(d, KEYS[i]), imgs["raw_chw"][i])
    assert not (dbs / "raw_lmdb" / "lock.mdb").exists() or os.access(dbs, os.W_OK)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_golden_encoded_lmdb_reads_back(dbs, fmt):
    imgs = np.load(dbs / "images.npz")
    r = LMDBReader(dbs / f"{fmt}_lmdb")
    assert r.keys() == KEYS
    for i, (key, value) in enumerate(r.items()):
        d = D.parse_datum(value, key)
        assert d.encoded and d.label == imgs["labels"][i]
        assert d.data == imgs[f"{fmt}_bytes/{i}"].tobytes()   # the stored bytes, unchanged
        arr = D.decode_datum(d, key)
        bgr = imgs["png_jpeg_source_rgb_hwc"][i][:, :, ::-1].transpose(2, 0, 1)
        if fmt == "png":
            assert np.array_equal(arr, bgr)               # lossless: exactly the source, in BGR order
        else:
            # lossy; the exact pixels depend on the libjpeg build (see tests/layers/test_data.py)
            assert arr.shape == bgr.shape
            assert np.abs(arr.mean((1, 2)) - bgr.mean((1, 2))).max() < 2


def test_wrap_cursor_wraps_and_resumes(dbs, tmp_path):
    c = WrapCursor(dbs / "raw_lmdb")
    keys = [c.next()[0] for _ in range(12)]
    assert keys == (KEYS * 3)[:12] and c.wraps == 2
    c2 = pickle.loads(pickle.dumps(c))   # no handles pickled; continues at the same record
    assert c2.next()[0] == KEYS[2] and c.next()[0] == KEYS[2]
    c.close()
    c2.close()


def _read_in_child(path, q):
    r = LMDBReader(path)
    q.put([k.decode() for k in r.keys()])


def test_reader_in_other_processes(dbs):
    r = LMDBReader(dbs / "raw_lmdb")
    len(r)  # open here first: children must reopen, not reuse the parent's handle
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_read_in_child, args=(r.path, q)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert got == [[k.decode() for k in KEYS]] * 2
    r2 = pickle.loads(pickle.dumps(r))
    assert r2._env is None and r2.keys() == KEYS


def test_writer_round_trip(tmp_path):
    path = tmp_path / "db"
    arrays = [np.full((1, 2, 2), i, np.uint8) for i in range(7)]
    with LMDBWriter(path, commit_every=3) as w:
        for i, a in enumerate(arrays):
            w.put(f"{i:08d}", D.array_to_datum(a, i))
    assert not (tmp_path / "db.partial").exists()
    assert not (path / "lock.mdb").exists()
    r = LMDBReader(path)
    assert len(r) == 7
    for i in range(7):
        assert r.datum(i).label == i and np.array_equal(r.array(i), arrays[i])


def test_writer_grows_map(tmp_path):
    with LMDBWriter(tmp_path / "db", map_size=64 * 1024) as w:
        for i in range(50):
            w.put(f"{i:04d}", os.urandom(8000))
    assert len(LMDBReader(tmp_path / "db")) == 50


def test_interrupted_write_leaves_no_db(tmp_path):
    path = tmp_path / "db"
    with pytest.raises(KeyboardInterrupt):
        with LMDBWriter(path, commit_every=2) as w:
            for i in range(5):
                w.put(f"{i}", b"x")
            raise KeyboardInterrupt
    assert not path.exists() and not (tmp_path / "db.partial").exists()
    # a crash (no cleanup) leaves only <path>.partial, which reading refuses with a clear message
    w = LMDBWriter(path)
    w.put("a", b"x")
    w.commit()
    os.makedirs(path)
    with pytest.raises(DataError, match="unfinished database"):
        check_lmdb(path)
    os.rmdir(path)
    w.abort()
    with pytest.raises(DataError, match="not found"):
        check_lmdb(path)


def test_writer_refuses_existing(tmp_path):
    (tmp_path / "db").mkdir()
    with pytest.raises(DataError, match="already exists"):
        LMDBWriter(tmp_path / "db")


def test_missing_lmdb_names_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"LMDB 'nope' not found \\(working directory {tmp_path}"):
        LMDBReader("nope")


def test_leveldb_dir_is_refused_with_conversion_hint(tmp_path):
    ldb = tmp_path / "train_leveldb"
    ldb.mkdir()
    for n in ("CURRENT", "LOCK", "LOG", "MANIFEST-000002", "000005.ldb"):
        (ldb / n).write_bytes(b"")
    assert is_leveldb(ldb)
    with pytest.raises(DataError, match="is a LevelDB database.*LMDB only.*leveldb-to-lmdb.*backend: LMDB"):
        LMDBReader(ldb)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(DataError, match="without data.mdb"):
        LMDBReader(plain)


def test_empty_lmdb(tmp_path):
    with LMDBWriter(tmp_path / "db"):
        pass
    with pytest.raises(DataError, match="no records"):
        WrapCursor(tmp_path / "db").next()


def test_compute_image_mean_matches_caffe_file(dbs, tmp_path):
    """Caffe's compute_image_mean wrote mean.binaryproto; ours is byte-identical."""
    out = tmp_path / "mean.binaryproto"
    mean, ch = compute_image_mean(dbs / "raw_lmdb", out)
    assert out.read_bytes() == (dbs / "mean.binaryproto").read_bytes()
    assert mean.shape == (1, 3, 8, 9)
    assert [f"{v:g}" for v in ch] == ["136.319", "126.797", "126.733"]  # Caffe's log lines (meta.json)


def _make_images(folder, n=5, size=(6, 7), gray=False):
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    lines, imgs = [], []
    for i in range(n):
        img = rng.integers(0, 256, size + (() if gray else (3,)), dtype=np.uint8)
        name = f"sub dir/img {i}.png" if i == 1 else f"img{i}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), img)
        lines.append(f"{name} {i % 3}")
        imgs.append(img)
    return lines, imgs


def test_convert_imageset_raw_and_mean(tmp_path):
    lines, imgs = _make_images(tmp_path / "imgs")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    n = convert_imageset(str(tmp_path / "imgs") + "/", tmp_path / "list.txt", tmp_path / "db")
    assert n == 5
    r = LMDBReader(tmp_path / "db")
    assert [k.decode() for k in r.keys()] == [f"{i:08d}_{ln.rsplit(' ', 1)[0]}" for i, ln in enumerate(lines)]
    for i in range(5):
        d = r.datum(i)
        assert not d.encoded and d.label == i % 3
        assert np.array_equal(D.decode_datum(d), imgs[i].transpose(2, 0, 1))
    mean, ch = compute_image_mean(tmp_path / "db", tmp_path / "mean.binaryproto")
    ref = np.stack(imgs).astype(np.float32).mean(0).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(mean, ref, rtol=0, atol=1e-4)
    from netspec.data.transform import read_mean_file
    assert np.array_equal(read_mean_file(tmp_path / "mean.binaryproto"), mean[0])
    b = caffe_pb2.BlobProto.FromString((tmp_path / "mean.binaryproto").read_bytes())
    assert (b.num, b.channels, b.height, b.width) == (1, 3, 6, 7)   # Caffe's legacy-dims layout


def test_convert_imageset_encoded_gray_resize(tmp_path):
    lines, imgs = _make_images(tmp_path / "imgs")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    root = str(tmp_path / "imgs") + "/"
    convert_imageset(root, tmp_path / "list.txt", tmp_path / "enc", encoded=True)
    r = LMDBReader(tmp_path / "enc")
    for i in range(5):
        d = r.datum(i)
        name = lines[i].rsplit(" ", 1)[0]
        assert d.encoded and d.data == (tmp_path / "imgs" / name).read_bytes()  # file bytes kept
    convert_imageset(root, tmp_path / "list.txt", tmp_path / "g", gray=True, resize_height=3, resize_width=4,
                     encode_type="png")
    r = LMDBReader(tmp_path / "g")
    a = r.array(0)
    assert a.shape == (1, 3, 4)
    ref = cv2.resize(cv2.imread(str(tmp_path / "imgs/img0.png"), cv2.IMREAD_GRAYSCALE), (4, 3))
    assert np.array_equal(a[0], ref)
    with pytest.raises(DataError, match="LMDB only"):
        convert_imageset(root, tmp_path / "list.txt", tmp_path / "l", backend="leveldb")


def test_convert_imageset_missing_file_and_check_size(tmp_path, caplog):
    lines, _ = _make_images(tmp_path / "imgs")
    (tmp_path / "list.txt").write_text("\n".join(lines[:2] + ["gone.png 1"] + lines[2:]) + "\n")
    root = str(tmp_path / "imgs") + "/"
    n = convert_imageset(root, tmp_path / "list.txt", tmp_path / "db")   # Caffe skips unreadable images
    assert n == 5
    assert "list.txt:3: image file" in caplog.text and "gone.png" in caplog.text
    with pytest.raises(DataError, match="list.txt:3: image file '.*gone.png' not found"):
        convert_imageset(root, tmp_path / "list.txt", tmp_path / "db2", skip_missing=False)
    assert not (tmp_path / "db2").exists() and not (tmp_path / "db2.partial").exists()
    cv2.imwrite(str(tmp_path / "imgs" / "big.png"), np.zeros((9, 9, 3), np.uint8))
    (tmp_path / "list2.txt").write_text("img0.png 0\nbig.png 1\n")
    with pytest.raises(DataError, match="list2.txt:2: .*check_size"):
        convert_imageset(root, tmp_path / "list2.txt", tmp_path / "db3", check_size=True)


def test_tools_scripts(tmp_path):
    lines, imgs = _make_images(tmp_path / "imgs", n=3)
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], cwd=tmp_path, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    p = run(ROOT / "tools/convert_imageset.py", "-shuffle", "--seed=1", "--encoded=false", "--resize_height=4",
            "--resize_width", "5", "imgs/", "list.txt", "out_lmdb")
    assert p.returncode == 0, p.stderr
    assert "wrote 3 records" in p.stdout
    r = LMDBReader(tmp_path / "out_lmdb")
    assert len(r) == 3 and r.array(0).shape == (3, 4, 5)
    p = run(ROOT / "tools/convert_imageset.py", "--quiet", "--gray", "imgs/", "list.txt", "gray_lmdb")
    assert p.returncode == 0, p.stderr
    assert LMDBReader(tmp_path / "gray_lmdb").array(0).shape == (1, 6, 7)
    p = run(ROOT / "tools/compute_image_mean.py", "-backend=lmdb", "out_lmdb", "mean.binaryproto")
    assert p.returncode == 0, p.stderr
    assert "mean_value channel [2]:" in p.stdout
    assert (tmp_path / "mean.binaryproto").exists()
    p = run(ROOT / "tools/compute_image_mean.py", "missing_lmdb")
    assert p.returncode == 1 and "not found" in p.stderr


def test_reader_indexing(dbs):
    r = LMDBReader(dbs / "raw_lmdb")
    assert D.parse_datum(r[3]).label == r.datum(3).label
    assert r.get(r.keys()[3]) == r[3] and r.get("00000003") == r[3]
    with pytest.raises(DataError, match="no record 'zz'"):
        r.get("zz")
