"""Per-class scores as users report them: ``tools/score.py --classes idd --table`` prints, after score.py's
unchanged lines, a table of per-class IoU and accuracy (percent) with IDD's class names, then the means."""
import io
import re

import cv2
import numpy as np
import pytest

import netspec
from netspec.tools import score
from netspec.solver import metrics
from netspec.data.packers import IDD_CLASSES

C = len(IDD_CLASSES)
DEPLOY = """
name: "argmax_of_grey"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
        convolution_param { num_output: 26 kernel_size: 1 } }
"""


def test_class_table_by_hand():
    hist = np.array([[6, 2, 0],     # class a: 8 pixels, 6 right
                     [1, 3, 0],     # class b: 4 pixels, 3 right
                     [0, 0, 0]])    # class c: absent from truth and prediction
    s = metrics.scores(hist)
    lines = metrics.format_class_table(s, ["a", "bb", "c"], hist).splitlines()
    assert lines[0].split() == ["#", "class", "IoU", "%", "acc", "%", "share", "%"]
    # IoU a = 6 / (8 + 7 - 6) = 66.67 %, acc a = 6/8; IoU b = 3 / (4 + 5 - 3) = 50 %, acc b = 3/4
    assert lines[1].split() == ["0", "a", "66.67", "75.00", "66.67"]
    assert lines[2].split() == ["1", "bb", "50.00", "75.00", "33.33"]
    assert lines[3].split() == ["2", "c", "n/a", "n/a", "0.00"]
    assert lines[4].split() == ["mean", "58.33", "75.00"]
    assert len({len(line) for line in lines[:4]}) == 1  # aligned columns
    assert metrics.format_class_table(s, ["a", "bb", "c"]).splitlines()[0].split()[-1] == "%"  # no share column


@pytest.fixture
def idd_like(tmp_path):
    """A 26-class deploy net that predicts class k where an image pixel's grey value is 5k, its weights, and a
    dataset folder data/idd/val (images/, labels/) whose labels disagree with the prediction here and there."""
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    net = netspec.Net(str(tmp_path / "deploy.prototxt"), netspec.TEST)
    c = np.arange(C, dtype=np.float32)
    net.params["score"][0].data[...] = np.repeat(c[:, None] / 3, 3, axis=1)[:, :, None, None]  # c * grey
    net.params["score"][1].data[...] = -2.5 * c ** 2                                           # argmax: grey / 5
    net.save(str(tmp_path / "w.caffemodel"))
    rng = np.random.default_rng(0)
    root = tmp_path / "data" / "idd" / "val"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    pairs = []
    for name in ("a", "b"):
        pred = rng.choice([0, 2, 9, 17, 25], size=(5, 7)).astype(np.uint8)   # road sidewalk car billboard sky
        label = pred.copy()
        label[0, :3] = 2                      # some pixels labelled sidewalk, predicted otherwise
        label[4, 4:] = 255                    # void
        cv2.imwrite(str(root / "images" / f"{name}.png"), np.repeat(pred[..., None] * 5, 3, axis=2))
        cv2.imwrite(str(root / "labels" / f"{name}.png"), label)
        pairs.append((label, pred))
    return tmp_path, root, pairs


def _score(args):
    out = io.StringIO()
    assert score.main(args + ["--no-progress", "--quiet"], out=out) == 0
    return out.getvalue().splitlines()


def test_score_table_with_idd_names(idd_like):
    tmp, root, pairs = idd_like
    common = ["--model", str(tmp / "deploy.prototxt"), "--weights", str(tmp / "w.caffemodel"),
              "--dataset", str(root), "--mean", "0", "0", "0"]
    plain = _score(common + ["--classes", "idd"])
    table = _score(common + ["--classes", "idd", "--table"])
    # score.py's lines first, unchanged; the table after them
    assert table[:len(plain)] == plain and len(plain) == 4 + C
    assert [l.split()[0] for l in plain[:4]] == ["overall", "mean", "mean", "fwavacc"]
    assert plain[4 + 17].startswith("IU billboard ")
    rows = table[len(plain):]
    assert rows[0].split()[:2] == ["#", "class"] and len(rows) == 1 + C + 1
    # the per-class IoU of the pixels counted by hand
    hist = np.zeros((C, C), np.int64)
    for label, pred in pairs:
        ok = label != 255
        np.add.at(hist, (label[ok].astype(int), pred[ok].astype(int)), 1)
    with np.errstate(invalid="ignore"):
        iu = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    for k, name in enumerate(IDD_CLASSES):
        m = re.fullmatch(rf"\s*{k}\s+{re.escape(name)}\s+(\S+)\s+(\S+)\s+(\S+)", rows[1 + k])
        assert m, rows[1 + k]
        if np.isnan(iu[k]):
            assert m.group(1) == "n/a"
        else:
            assert float(m.group(1)) == pytest.approx(100 * iu[k], abs=0.006)
    # sidewalk: some of its pixels predicted as other classes (IoU < 100); sky: every sky pixel found (acc 100)
    assert float(rows[1 + 2].split()[2]) < 100 and float(rows[1 + 25].split()[3]) == pytest.approx(100.0)
    assert rows[-1].split()[0] == "mean"
    assert float(rows[-1].split()[1]) == pytest.approx(100 * np.nanmean(iu), abs=0.006)
    # no --classes: a dataset under data/idd gets IDD's names
    assert _score(common + ["--table"]) == table


def test_idd_is_guessed_from_paths_only_as_a_word():
    assert score.guess_dataset({"source": "data/idd/val"}) == "idd"
    assert score.guess_dataset(None, "/data/IDD_Segmentation") == "idd"
    assert score.guess_dataset({"source": "data/hidden_set/val"}) is None
    assert score.known_classes()["idd"][:3] == ("road", "drivable fallback", "sidewalk")


def test_cityscapes_names_are_the_19_train_ids():
    assert score.guess_dataset({"source": "data/cityscapes/val"}) == "cityscapes"
    names = score.load_class_names(None, 19, "cityscapes")
    assert len(names) == 19 and names[0] == "road" and names[11] == "person" and names[18] == "bicycle"
    assert score.load_class_names("cityscapes", 19) == names


def test_class_names_file_beside_the_data_is_used_without_classes(idd_like, tmp_path):
    tmp, root, _ = idd_like
    other = tmp_path / "mine" / "val"   # a dataset whose path names no known dataset
    other.parent.mkdir()
    root.rename(other)
    names = [f"thing {k}" for k in range(C)]
    common = ["--model", str(tmp / "deploy.prototxt"), "--weights", str(tmp / "w.caffemodel"), "--dataset",
              str(other), "--mean", "0", "0", "0"]
    assert any(l.startswith("IU class_17 ") for l in _score(common))
    (other / "class_names.txt").write_text("".join(f"{n}\n" for n in names))   # as tools/build_seg_lmdb.py writes
    lines = _score(common)
    assert any(l.startswith("IU thing 17 ") for l in lines)
    assert any(l.startswith("IU billboard ") for l in _score(common + ["--classes", "idd"]))  # --classes wins
