"""Metrics against hand-computed confusion matrices; tools/test.py, time.py, score.py and infer.py end to end on
the demo net (random weights) and a tiny demo dataset."""
import math
import os
import re
import runpy
import sys

import cv2
import numpy as np
import pytest
import torch

import netspec
import netspec.data.synthetic  # noqa: F401  (the demo's class names, read below)
from netspec.tools import infer, score, test as test_tool, time as timing
from netspec.solver import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "prototxt", "demo")

NAN = float("nan")


# -- metrics ----------------------------------------------------------------------------------------------
def test_fast_hist_counts_rows_gt_and_drops_ignore_and_out_of_range():
    gt = np.array([[0, 0, 1, 255], [2, 1, 1, 7]])
    pred = np.array([[0, 1, 1, 0], [2, 0, 1, 2]])
    hist = metrics.fast_hist(gt, pred, 3)
    want = np.array([[1, 1, 0],     # gt 0: predicted 0 once, 1 once
                     [1, 2, 0],     # gt 1: predicted 0 once, 1 twice
                     [0, 0, 1]])    # gt 2: predicted 2; the 255 and the 7 are not counted
    np.testing.assert_array_equal(hist, want)


def test_scores_hand_computed_with_class_absent_from_gt_and_prediction():
    # class 2 never occurs in ground truth nor predictions: its accuracy and IU are NaN and left out.
    hist = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    s = metrics.scores(hist)
    assert s["overall accuracy"] == pytest.approx(5 / 6)
    assert s["mean accuracy"] == pytest.approx((3 / 4 + 2 / 2) / 2)
    iu0, iu1 = 3 / (4 + 3 - 3), 2 / (2 + 3 - 2)
    assert s["mean IU"] == pytest.approx((iu0 + iu1) / 2)
    assert s["fwavacc"] == pytest.approx(4 / 6 * iu0 + 2 / 6 * iu1)
    assert math.isnan(s["per_class_iu"][2]) and math.isnan(s["per_class_acc"][2])
    text = metrics.format_scores(s, ["bg", "a", "b"], loss=1.5)
    assert text.splitlines() == ["loss 1.5000", "overall accuracy 0.8333", "mean accuracy 0.8750",
                                 "mean IU 0.7083", "fwavacc 0.7222", "IU bg 0.7500", "IU a 0.6667", "IU b nan"]


def test_scores_class_absent_from_gt_but_predicted_counts_as_zero_iu():
    # FCN's SIFT Flow caveat: a class missing from ground truth but predicted has IU 0 (pulls mean IU down)
    # while its accuracy is NaN (left out of mean accuracy); fwavacc ignores it (freq 0).
    hist = np.array([[3, 1], [0, 0]])
    s = metrics.scores(hist)
    assert s["per_class_iu"][1] == 0.0 and math.isnan(s["per_class_acc"][1])
    assert s["mean IU"] == pytest.approx((3 / 4 + 0) / 2)
    assert s["mean accuracy"] == pytest.approx(3 / 4)
    assert s["fwavacc"] == pytest.approx(3 / 4)
    assert s["overall accuracy"] == pytest.approx(3 / 4)


def test_scores_from_labels_with_ignore_label_match_hand_values():
    gt = np.array([[0, 0, 0, 255], [1, 1, 255, 255]])
    pred = np.array([[0, 0, 1, 1], [1, 0, 0, 1]])
    s = metrics.scores(metrics.fast_hist(gt, pred, 2))  # hist [[2, 1], [1, 1]]
    assert s["overall accuracy"] == pytest.approx(3 / 5)
    assert s["mean IU"] == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert s["fwavacc"] == pytest.approx(3 / 5 * 2 / 4 + 2 / 5 * 1 / 3)


def test_group_scores_nanmean_over_members():
    s = metrics.scores(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]))
    rows = metrics.group_scores(s, {"things": [0, 1], "empty": [2]})
    assert rows[0][0] == "things" and rows[0][1] == pytest.approx((0.75 + 2 / 3) / 2)
    assert math.isnan(rows[1][1])
    assert metrics.format_group_scores(rows[:1]) == "group things mean IU 0.7083 mean accuracy 0.8750"


def test_class_names_files_and_known_sets(tmp_path):
    assert score.load_class_names("demo", 4) == list(netspec.data.synthetic.CLASSES)
    assert score.load_class_names(None, 21, "voc")[15] == "person"
    f = tmp_path / "names.txt"
    f.write_text("0 sky\n1 road\n# comment\n2 tall tree\n")
    assert score.load_class_names(str(f), 3) == ["sky", "road", "tall tree"]
    assert score.load_class_names(None, 3) == ["class_0", "class_1", "class_2"]
    with pytest.raises(netspec.NetspecError):
        score.load_class_names("nosuchset", 3)


# -- palettes ---------------------------------------------------------------------------------------------
def test_voc_palette_is_the_standard_one():
    p = infer.voc_palette()
    assert p.shape == (256, 3)
    assert p[:6].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]]
    assert p[15].tolist() == [192, 128, 128]    # person
    assert p[20].tolist() == [0, 64, 128]       # tvmonitor
    assert p[255].tolist() == [224, 224, 192]   # void
    assert len({tuple(c) for c in p}) == 256


def test_distinct_palette_for_many_classes():
    p = infer.distinct_palette(151)
    assert len({tuple(c) for c in p[:151]}) == 151 and p[0].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(p, infer.distinct_palette(151))  # deterministic
    c = p[:151].astype(np.int64)
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(151) * 1e9
    assert d.min() >= 25  # well apart, not just unequal
    assert p[255].tolist() == [224, 224, 192]
    assert infer.palette_for(21)[:21].tolist() == infer.voc_palette()[:21].tolist()
    assert infer.palette_for(150).tolist() == infer.distinct_palette(150).tolist()
    assert len({tuple(c) for c in infer.distinct_palette(300)}) == 300


# -- caffe test -------------------------------------------------------------------------------------------
def test_caffe_test_logs_batches_loss_and_means(in_demo, netspec_log):
    rc = test_tool.main(["--model", os.path.join(DEMO, "val.prototxt"), "--weights", "demo.caffemodel",
                             "--iterations", "3"])
    assert rc == 0
    assert "Use CPU." in netspec_log and "Running for 3 iterations." in netspec_log
    batches = [float(m.split(" = ")[1]) for m in netspec_log if re.match(r"Batch \d+, loss = ", m)]
    assert len(batches) == 3 and [m for m in netspec_log if m.startswith("Batch ")][0].startswith("Batch 0, ")
    loss = [m for m in netspec_log if m.startswith("Loss: ")]
    assert len(loss) == 1 and float(loss[0].split()[1]) == pytest.approx(np.mean(batches), rel=1e-4)
    mean = [m for m in netspec_log if re.match(r"loss = \S+ \(\* 1 = \S+ loss\)$", m)]
    assert len(mean) == 1 and float(mean[0].split()[2]) == pytest.approx(np.mean(batches), rel=1e-4)


def test_caffe_test_needs_weights(in_demo, capsys):
    # --weights is required, and the usage line says so (it used to show [--weights WEIGHTS] as optional)
    with pytest.raises(SystemExit) as e:
        test_tool.main(["--model", os.path.join(DEMO, "val.prototxt")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "required: --weights" in err and "[--weights" not in err


# -- caffe time -------------------------------------------------------------------------------------------
def test_caffe_time_logs_every_layer_and_the_averages(in_demo, netspec_log, capsys):
    rc = timing.main(["--model", os.path.join(DEMO, "train.prototxt"), "--iterations", "1"])
    assert rc == 0
    net = netspec.Net(os.path.join(DEMO, "train.prototxt"), netspec.TRAIN)
    names = [n.name for n in net.module.nodes]
    assert any(n.endswith("_split") for n in names)  # Split layers are timed as well
    for n in names:
        assert any(re.fullmatch(rf"\s*{re.escape(n)}\tforward: [0-9.e+-]+ ms\.", m) for m in netspec_log), n
        assert any(re.fullmatch(rf"\s*{re.escape(n)}\tbackward: [0-9.e+-]+ ms\.", m) for m in netspec_log), n
    short = next(n for n in names if len(n) < 10)
    assert "%10s" % short + "\tforward: " in "\n".join(netspec_log)  # setw(10), right aligned
    i = netspec_log.index("*** Benchmark ends ***")
    for k, head in enumerate(("Average Forward pass: ", "Average Backward pass: ", "Average Forward-Backward: ",
                              "Total Time: ")):
        assert netspec_log[i - 4 + k].startswith(head) and netspec_log[i - 4 + k].endswith(" ms.")
    assert any(m.startswith("Initial loss: ") for m in netspec_log)
    assert any(re.fullmatch(r"Iteration: 1 forward-backward time: [0-9.]+ ms\.", m) for m in netspec_log)
    assert "Average time per layer: " in netspec_log
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["layer", "type", "forward"]
    totals = [float(line.split()[4]) for line in table[1:-1]]
    assert totals == sorted(totals, reverse=True) and len(totals) == len(names)


_TINY = """
name: "tiny"
layer { name: "in" type: "Input" top: "data" top: "target"
        input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 dim: 4 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "sum" }
layer { name: "loss" type: "EuclideanLoss" bottom: "sum" bottom: "target" top: "loss" loss_weight: 2 }
"""


def test_layer_timer_backward_gives_the_nets_gradients(tmp_path):
    """Layer-by-layer backward (in-place ReLU, an implicit Split, a loss weight) equals autograd's."""
    p = tmp_path / "tiny.prototxt"
    p.write_text(_TINY)
    torch.manual_seed(3)
    net = netspec.Net(str(p), netspec.TRAIN)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.normal(size=(2, 3, 6, 6))
    net.blobs["target"].data[...] = rng.normal(size=(2, 4, 6, 6))
    net.clear_param_diffs()
    loss = net.forward_backward()
    want = [p.grad.clone() for p in net.module.parameters()]
    timer = timing.LayerTimer(net)
    assert timer.forward(timed=False) == pytest.approx(loss, rel=1e-5)
    timer.backward()
    for w, p in zip(want, net.module.parameters()):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6)
    assert all(t >= 0 for t in timer.backward_s) and timer.backward_s[0] >= 0


# -- score ------------------------------------------------------------------------------------------------
_METRIC_LINE = r"{} [01]\.\d{{4}}"


def _metric(lines, name):
    return float(next(line for line in lines if line.startswith(name + " ")).split()[-1])


def test_score_val_net_prints_metrics_and_saves_results(in_demo, netspec_log, capsys):
    (in_demo / "data" / "demo" / "groups.txt").write_text("shapes: disc square triangle\nstuff: background\n")
    try:
        rc = score.main(["--model", os.path.join(DEMO, "val.prototxt"), "--weights", "demo.caffemodel",
                                  "--save-dir", "res", "--no-progress"])
    finally:
        (in_demo / "data" / "demo" / "groups.txt").unlink()
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    for name in ("overall accuracy", "mean accuracy", "mean IU", "fwavacc"):
        assert any(re.fullmatch(_METRIC_LINE.format(name), line) for line in out), (name, out)
    assert re.fullmatch(r"loss \d+\.\d{4}", out[0])
    assert [line.split()[1] for line in out if line.startswith("IU ")] == list(netspec.data.synthetic.CLASSES)
    assert [line.split()[1] for line in out if line.startswith("group ")] == ["shapes", "stuff"]
    assert "Scoring score over 4 batches of 1 (4 images)" in netspec_log  # default: every record of data/demo/val
    hist = np.load(in_demo / "res" / "confusion.npy")
    assert hist.shape == (4, 4) and hist.sum() == 4 * 64 * 64
    s = metrics.scores(hist)
    assert _metric(out, "mean IU") == pytest.approx(s["mean IU"], abs=6e-5)
    assert _metric(out, "fwavacc") == pytest.approx(s["fwavacc"], abs=6e-5)
    png = (in_demo / "res" / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    csv = (in_demo / "res" / "per_class.csv").read_text().splitlines()
    assert csv[0] == "index,class,iou,accuracy,gt_pixels,pred_pixels" and csv[2].startswith("1,disc,")
    assert sum(int(r.split(",")[4]) for r in csv[1:]) == hist.sum()


def test_score_deploy_net_on_dataset_matches_the_val_net(in_demo, capsys):
    args = ["--weights", "demo.caffemodel", "--no-progress", "--quiet", "--classes", "demo"]
    assert score.main(["--model", os.path.join(DEMO, "val.prototxt")] + args) == 0
    val = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("loss")]
    assert score.main(["--model", os.path.join(DEMO, "deploy.prototxt"), "--dataset", "data/demo/val"]
                               + args) == 0
    deploy = capsys.readouterr().out.splitlines()
    assert deploy == val and not any(line.startswith("loss") for line in deploy)


def test_score_deploy_without_dataset_is_a_clear_error(in_demo, netspec_log):
    rc = score.main(["--model", os.path.join(DEMO, "deploy.prototxt"), "--weights", "demo.caffemodel"])
    assert rc == 1 and any("--dataset" in m for m in netspec_log)


# -- infer ------------------------------------------------------------------------------------------------
def test_infer_writes_input_sized_masks_of_palette_colours(in_demo, tmp_path):
    from netspec.data.synthetic import make_sample
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(7)
    sizes = {"a": (64, 64), "b": (40, 56)}
    for stem, (h, w) in sizes.items():
        img, _ = make_sample(rng, 64)
        cv2.imwrite(str(imgs / f"{stem}.png"), cv2.resize(img, (w, h)))
    (imgs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc = infer.main([str(imgs), "--model", os.path.join(DEMO, "deploy.prototxt"), "--weights", "demo.caffemodel",
                     "--out", str(out), "--no-progress", "--quiet"])
    assert rc == 0
    pal = infer.voc_palette()
    for stem, (h, w) in sizes.items():
        lab = cv2.imread(str(out / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        col = cv2.imread(str(out / "color" / f"{stem}.png"))[..., ::-1]
        ov = cv2.imread(str(out / "overlay" / f"{stem}.png"))
        assert lab.shape == (h, w) and col.shape == ov.shape == (h, w, 3)
        assert lab.max() < 4
        colours = {tuple(c) for c in col.reshape(-1, 3)}
        assert colours <= {tuple(c) for c in pal[:4]}
        np.testing.assert_array_equal(col, pal[lab])
        src = cv2.imread(str(imgs / f"{stem}.png")).astype(np.float32)
        np.testing.assert_allclose(ov, 0.5 * src + 0.5 * col[..., ::-1], atol=1)
    assert sorted(os.listdir(out / "labels")) == ["a.png", "b.png"]


def test_infer_channels_last_default_writes_the_same_labels(in_demo, tmp_path, monkeypatch):
    """On the CPU infer runs NHWC by default (the faster layout there); the label maps are those of the
    contiguous net, and --no-channels-last turns it off."""
    from netspec.data.synthetic import make_sample
    from netspec.net import pycaffe
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        cv2.imwrite(str(imgs / f"{i}.png"), make_sample(rng, 64)[0])
    layouts = []
    real = pycaffe.Net.configure
    monkeypatch.setattr(pycaffe.Net, "configure",
                        lambda self, **kw: (layouts.append(kw.get("channels_last")), real(self, **kw))[1])
    runs = {}
    for flag in ([], ["--no-channels-last"]):
        out = tmp_path / ("out" + "".join(flag))
        assert infer.main([str(imgs), "--model", os.path.join(DEMO, "deploy.prototxt"), "--weights",
                           "demo.caffemodel", "--out", str(out), "--no-progress", "--quiet", *flag]) == 0
        runs[tuple(flag)] = [cv2.imread(str(out / "labels" / f"{i}.png"), cv2.IMREAD_UNCHANGED) for i in range(3)]
    assert layouts == [True]  # configured once (NHWC), not at all with --no-channels-last
    for a, b in zip(runs[()], runs[("--no-channels-last",)]):
        np.testing.assert_array_equal(a, b)


def test_infer_labels_match_the_nets_argmax_with_mean_and_scale(in_demo):
    net = netspec.Net(os.path.join(DEMO, "deploy.prototxt"), "demo.caffemodel", netspec.TEST)
    img = np.random.default_rng(1).integers(0, 256, (24, 40, 3)).astype(np.uint8)
    lab = infer.predict_label(net, img, mean=(10, 20, 30), scale=0.5)
    x = (img.astype(np.float32).transpose(2, 0, 1) - np.array([10, 20, 30], np.float32)[:, None, None]) * 0.5
    net.blobs["data"].reshape(1, 3, 24, 40)
    out = net.forward(data=x[None])
    np.testing.assert_array_equal(lab, out["score"][0].argmax(0))


# -- the scripts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tool", ["test", "time", "score", "infer", "plot_log", "draw_net"])
def test_tool_scripts_show_usage(tool, monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "argv", [f"{tool}.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(ROOT, "tools", f"{tool}.py"), run_name="__main__")
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out
