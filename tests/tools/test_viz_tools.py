"""tools/plot_log.py (our logs and real Caffe glog logs) and tools/draw_net.py (with and without Graphviz)."""
import os
import shutil
import stat
import sys

import pytest

import netspec
from netspec.tools import draw_net, plot_log
from netspec.net.pycaffe import load_net_param

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "prototxt", "demo")
PNG = b"\x89PNG\r\n\x1a\n"

# A real Caffe log (glog prefixes; the older "Iteration N, loss" form too) and an FCN score.py line.
CAFFE_LOG = """\
I0518 10:21:09.000001  1234 solver.cpp:330] Iteration 0, Testing net (#0)
I0518 10:21:10.000001  1234 solver.cpp:397]     Test net output #0: accuracy = 0.25
I0518 10:21:10.000002  1234 solver.cpp:397]     Test net output #1: loss = 3.04452 (* 1 = 3.04452 loss)
I0518 10:21:10.123456  1234 solver.cpp:218] Iteration 0 (0 iter/s, 0.512s/20 iters), loss = 3.04452
I0518 10:21:10.123457  1234 solver.cpp:237]     Train net output #0: loss = 3.04452 (* 1 = 3.04452 loss)
I0518 10:21:10.123458  1234 sgd_solver.cpp:105] Iteration 0, lr = 1e-10
I0518 10:21:20.000000  1234 solver.cpp:218] Iteration 20 (2.1 iter/s, 9.5s/20 iters), loss = 2.5
I0518 10:21:20.000001  1234 sgd_solver.cpp:105] Iteration 20, lr = 1e-10
I0518 10:21:30.000000  1234 solver.cpp:228] Iteration 40, loss = 1.75
I0518 10:21:30.000001  1234 sgd_solver.cpp:105] Iteration 40, lr = 1e-11
I0518 10:21:31.000000  1234 solver.cpp:330] Iteration 40, Testing net (#0)
I0518 10:21:32.000000  1234 solver.cpp:397]     Test net output #0: accuracy = 0.75
I0518 10:21:32.000001  1234 solver.cpp:397]     Test net output #1: loss = nan (* 1 = nan loss)
>>> 2016-05-18 10:21:40.123456 Iteration 40 mean IU 0.6327
"""

# Our train.py: glog lines on stderr, Solver.finish's score lines on stdout (2>&1).
OUR_LOG = """\
I1121 13:40:05.000000 31303 solver.py:379] Iteration 0 (0 iter/s, 0.3s/10 iters), loss = 24.5669
I1121 13:40:05.000001 31303 solver.py:424]     Train net output #0: loss = 24.5669 (* 1 = 24.5669 loss)
I1121 13:40:05.000002 31303 solver.py:462] Iteration 0, lr = 0.001
I1121 13:40:07.000000 31303 solver.py:436] Iteration 10, Testing net (#0)
I1121 13:40:07.000001 31303 solver.py:452] Test loss: 2.5
I1121 13:40:07.000002 31303 solver.py:424]     Test net output #0: loss = 2.5 (* 1 = 2.5 loss)
I1121 13:40:08.000000 31303 solver.py:379] Iteration 10 (5 iter/s, 2s/10 iters), loss = 0.74, ETA 0:00:10
I1121 13:40:08.000002 31303 solver.py:462] Iteration 10, lr = 0.0001
>>> Iteration 10 test net #0
loss 1.4408
overall accuracy 0.9595
mean accuracy 0.8589
mean IU 0.7623
fwavacc 0.9247
IU background 0.9593
"""


def test_parse_caffe_glog_log():
    tl = plot_log.parse_log(CAFFE_LOG.splitlines())
    assert tl.train_loss == [(0, 3.04452), (20, 2.5), (40, 1.75)]
    assert tl.lr == [(0, 1e-10), (20, 1e-10), (40, 1e-11)]
    assert tl.test_outputs["accuracy"] == [(0, 0.25), (40, 0.75)]
    assert tl.test_outputs["loss"][0] == (0, 3.04452) and str(tl.test_outputs["loss"][1][1]) == "nan"
    assert tl.test_outputs["mean IU"] == [(40, 0.6327)]
    assert tl.train_outputs["loss"] == [(0, 3.04452)]


def test_parse_our_log_with_score_block():
    tl = plot_log.parse_log(OUR_LOG.splitlines())
    assert tl.train_loss == [(0, 24.5669), (10, 0.74)]
    assert tl.lr == [(0, 0.001), (10, 0.0001)]
    assert tl.test_outputs["Test loss"] == [(10, 2.5)]
    assert tl.test_outputs["loss"] == [(10, 2.5), (10, 1.4408)]
    assert tl.test_outputs["mean IU"] == [(10, 0.7623)] and tl.test_outputs["fwavacc"] == [(10, 0.9247)]
    assert "IU background" not in tl.test_outputs


def test_plot_log_writes_png_and_csv(tmp_path, capsys):
    log = tmp_path / "train.log"
    log.write_text(CAFFE_LOG + OUR_LOG)
    csv = tmp_path / "curves.csv"
    assert plot_log.main([str(log), "--csv", str(csv)]) == 0
    png = (tmp_path / "train.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 10000
    rows = csv.read_text().splitlines()
    assert rows[0] == "iteration,kind,name,value"
    assert "0,train,loss,3.04452" in rows and "40,lr,lr,1e-11" in rows and "40,test,mean IU,0.6327" in rows
    assert "wrote" in capsys.readouterr().out


def test_plot_log_rejects_a_log_without_training_lines(tmp_path, capsys):
    log = tmp_path / "empty.log"
    log.write_text("hello\n")
    assert plot_log.main([str(log)]) == 1
    assert "no 'Iteration N" in capsys.readouterr().err
    assert not (tmp_path / "empty.png").exists()


def test_draw_net_without_graphviz_writes_dot_and_summary(in_demo, monkeypatch, capsys):
    monkeypatch.setattr(draw_net.shutil, "which", lambda name: None)
    assert draw_net.main([os.path.join(DEMO, "train.prototxt"), "net/demo.png"]) == 0
    out = capsys.readouterr().out
    assert "install graphviz" in out and "wrote net/demo.dot" in out and not (in_demo / "net" / "demo.png").exists()
    dot = (in_demo / "net" / "demo.dot").read_text()
    assert dot.startswith('digraph "') and dot.rstrip().endswith("}")
    net = netspec.Net(os.path.join(DEMO, "train.prototxt"), netspec.TRAIN)
    shapes_of = {n.name: n.top_shapes for n in net.module.nodes}
    layers = [(lp.name, lp.type, list(lp.bottom), list(lp.top), shapes_of[lp.name])
              for lp in load_net_param(os.path.join(DEMO, "train.prototxt"))[0].layer]
    for i, (name, typ, _, _, _) in enumerate(layers):
        assert f'"layer:{i}:{name}" [label="{name}\\n{typ}' in dot
    # an in-place layer (ReLU) makes a new version of its blob, so the graph stays acyclic
    i, (name, _, bottoms, tops, shapes) = next((i, l) for i, l in enumerate(layers) if l[2][:1] == l[3][:1])
    assert f'"blob:{tops[0]}:0" -> "layer:{i}:{name}"' in dot and f'"layer:{i}:{name}" -> "blob:{tops[0]}:1"' in dot
    assert f"{tops[0]}\\n{' x '.join(map(str, shapes[0]))}" in dot
    txt = (in_demo / "net" / "demo.txt").read_text()
    for name, typ, bottoms, tops, shapes in layers:
        line = next(l for l in txt.splitlines() if l.split()[1:2] == [name])
        assert typ in line and ", ".join(bottoms or ["-"]) in line
        assert ", ".join(f"{t} {list(s)}" for t, s in zip(tops, shapes)) in line


def test_draw_net_runs_dot_when_installed(in_demo, tmp_path, monkeypatch, capsys):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "dot"
    fake.write_text(f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n"
                    "open(args[args.index('-o') + 1], 'wb').write(b'picture ' + args[0].encode())\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ.get("PATH", ""))
    assert draw_net.main([os.path.join(DEMO, "deploy.prototxt"), "g.svg", "--rankdir", "TB"]) == 0
    assert (in_demo / "g.svg").read_bytes() == b"picture -Tsvg"
    assert "wrote g.svg" in capsys.readouterr().out
    assert "rankdir=TB;" in (in_demo / "g.dot").read_text()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_draw_net_real_graphviz_png(in_demo):
    assert draw_net.main([os.path.join(DEMO, "deploy.prototxt"), "deploy.png"]) == 0
    assert (in_demo / "deploy.png").read_bytes().startswith(PNG)


def test_draw_net_without_shapes_when_the_data_is_missing(tmp_path, monkeypatch, netspec_log):
    monkeypatch.chdir(tmp_path)  # no data/demo here; the net is drawn from the prototxt alone
    monkeypatch.setattr(draw_net.shutil, "which", lambda name: None)
    monkeypatch.setattr("netspec.data.seg.DEMO_ROOT", "no/such/root")  # never generate the demo set here
    assert draw_net.main([os.path.join(DEMO, "val.prototxt"), "val.png", "--phase", "TEST"]) == 0
    txt = (tmp_path / "val.txt").read_text()
    assert "no shapes" in txt and "conv1_1" in txt
    assert any("drawing without blob shapes" in m for m in netspec_log)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_draw_net_default_picture_is_readable(in_demo):
    # issue #20: the default used to be left to right, 9227 x 367 px for the demo net
    import cv2
    assert draw_net.main([os.path.join(DEMO, "train.prototxt"), "demo.png"]) == 0
    h, w = cv2.imread(str(in_demo / "demo.png")).shape[:2]
    assert w <= 800 and h > w, (w, h)


def _figures(monkeypatch):
    """The figures viz draws, kept open for inspection."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    return figs


def _log(path, losses, test=None, lr=0.001):
    lines = []
    for it, v in losses:
        lines.append(f"I1121 13:40:05.000000 1 solver.py:379] Iteration {it} (5 iter/s, 2s/10 iters), loss = {v}")
        lines.append(f"I1121 13:40:05.000002 1 solver.py:462] Iteration {it}, lr = {lr}")
    for it, v in test or []:
        lines.append(f"I1121 13:40:07.000000 1 solver.py:436] Iteration {it}, Testing net (#0)")
        lines.append(f"I1121 13:40:07.000002 1 solver.py:424]     Test net output #0: loss = {v} (* 1 = {v} loss)")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_plot_log_single_point_is_visible(tmp_path, monkeypatch, capsys):
    figs = _figures(monkeypatch)
    assert plot_log.main([_log(tmp_path / "one.log", [(0, 2.5)])]) == 0
    line = figs[0].axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [0] and line.get_marker() == "o"  # a lone point gets a marker


def test_plot_log_keeps_an_early_spike_off_the_axes_or_uses_log_scale(tmp_path, monkeypatch, capsys):
    figs = _figures(monkeypatch)
    losses = [(0, 500.0)] + [(i, 1.0 / (1 + 0.1 * i)) for i in range(10, 400, 10)]
    log = _log(tmp_path / "spike.log", losses)
    assert plot_log.main([log]) == 0
    lo, hi = figs[-1].axes[0].get_ylim()
    assert hi < 2.0 and lo < 0.3  # the curve, not the spike, fills the axes
    assert any("up to 500" in t.get_text() for t in figs[-1].axes[0].texts)
    assert plot_log.main([log, "--log-y"]) == 0
    assert figs[-1].axes[0].get_yscale() == "log"


def test_plot_log_compares_several_runs(tmp_path, monkeypatch, capsys):
    figs = _figures(monkeypatch)
    a = _log(tmp_path / "a.log", [(0, 2.0), (10, 1.0)], test=[(10, 1.5)])
    b = _log(tmp_path / "b.log", [(0, 3.0), (10, 0.5)], test=[(10, 0.9)], lr=0.01)
    out = tmp_path / "cmp.png"
    assert plot_log.main([f"base={a}", b, "--out", str(out), "--csv", str(tmp_path / "cmp.csv")]) == 0
    assert out.read_bytes().startswith(PNG)
    labels = [l.get_label() for l in figs[0].axes[0].get_lines()]
    assert labels == ["base: train loss", "base: test loss", "b: train loss", "b: test loss"]
    colours = [l.get_color() for l in figs[0].axes[0].get_lines()]
    assert colours[0] == colours[1] != colours[2] == colours[3]  # one colour per run
    rows = (tmp_path / "cmp.csv").read_text().splitlines()
    assert rows[0] == "run,iteration,kind,name,value" and "b,10,test,loss,0.9" in rows
    assert "(base)" in capsys.readouterr().out
