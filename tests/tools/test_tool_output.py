"""Issue #20: the tools as a Caffe user expects them. The final scores cover the images of the last test pass
(and say which), long passes draw a bar, live TensorBoard/CSV scalars, Caffe's single-dash flags, one
--quiet/--no-progress meaning, help on every option, honest messages (zero layers, class names, Finetuning,
the synthetic packer)."""
import csv
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import netspec
import netspec.progress
from netspec.tools import cli, draw_net, infer, plot_log, score, test as test_tool, time as timing, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "prototxt", "demo")


def _solver(tmp, prefix, **fields):
    """solvers/demo.prototxt, 4 iterations, a test pass every 2 (so one at the last iteration), 3 test
    batches, display every iteration."""
    from netspec.formats import prototxt
    sp = prototxt.read_solver(os.path.join(ROOT, "solvers", "demo.prototxt"))
    sp.train_net = os.path.join(ROOT, sp.train_net)
    sp.test_net[0] = os.path.join(ROOT, sp.test_net[0])
    sp.max_iter, sp.snapshot, sp.snapshot_prefix, sp.test_interval, sp.display = 4, 0, str(tmp / prefix), 2, 1
    sp.test_iter[0] = 3
    sp.random_seed = 3
    for k, v in fields.items():
        setattr(sp, k, v)
    path = tmp / f"{prefix}.prototxt"
    prototxt.write_text(sp, str(path))
    return str(path)


# -- 1, 2, 6: scores of the last test pass, progress bars, live scalars ---------------------------------------
def test_final_scores_are_the_last_test_pass_and_scalars_are_written_live(in_demo, tmp_path, capsys, netspec_log,
                                                                          monkeypatch):
    bars = []
    real_progress = cli.progress
    monkeypatch.setattr(netspec.progress, "progress",  # the solver's test passes draw theirs from netspec.progress
                        lambda it=None, **kw: bars.append(kw["desc"]) or real_progress(it, **kw))
    import importlib.util
    has_tb = importlib.util.find_spec("tensorboard") is not None  # the test extra has it; the CSV needs nothing
    rc = train.main(["-solver", _solver(tmp_path, "run"), "-weights", str(in_demo / "demo.caffemodel"),
                     "--scalars-csv", str(tmp_path / "scalars.csv"), "--quiet"]
                    + (["--tensorboard", str(tmp_path / "tb")] if has_tb else []))
    assert rc == 0
    out, err = capsys.readouterr()
    assert "Test net output" not in err  # --quiet keeps the console to warnings; the scalars still get written
    # two test passes (iterations 2 and 4), each behind a bar; no third pass for the final scores
    assert bars == ["test net #0", "test net #0"]
    test_losses = [float(m.group(1)) for m in
                   (re.search(r"Test net output #0: loss = (\S+)", x) for x in netspec_log) if m]
    assert len(test_losses) == 2
    # the score block's loss is the last Test net output's loss: the same 3 images, and it says which
    head = re.search(r"^>>> Iteration 4 test net #0: (.*)$", out, re.M).group(1)
    assert head == ("the Test net output pass above: 3 batches x 1 = 3 of the 4 images of data/demo/val; "
                    "tools/score.py scores them all")
    assert float(re.search(r"^loss (\S+)$", out, re.M).group(1)) == pytest.approx(test_losses[-1], abs=6e-5)
    # Finetuning is logged for --weights (and -weights, Caffe's spelling, was accepted)
    assert sum("Finetuning from" in m for m in netspec_log) == 1
    # the CSV scalars, written as the run went
    rows = list(csv.reader(open(tmp_path / "scalars.csv")))
    assert rows[0] == ["iteration", "tag", "value"]
    tags = {(int(r[0]), r[1]) for r in rows[1:]}
    assert {(0, "train/loss"), (0, "lr"), (2, "test/loss"), (4, "test/loss"), (4, "score/mean IU")} <= tags
    csv_test = [float(r[2]) for r in rows[1:] if r[1] == "test/loss"]
    assert csv_test == pytest.approx(test_losses, rel=1e-5)
    mean_iu = float(re.search(r"^mean IU (\S+)$", out, re.M).group(1))
    assert [float(r[2]) for r in rows[1:] if r[1] == "score/mean IU"] == pytest.approx([mean_iu], abs=6e-5)
    # the same scalars in TensorBoard's event file
    if not has_tb:
        pytest.skip("tensorboard is not installed (pip install 'netspec[tensorboard]'): its half is unchecked")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    assert {"train/loss", "lr", "test/loss", "score/mean IU"} <= set(ea.Tags()["scalars"])
    assert [e.value for e in ea.Scalars("test/loss")] == pytest.approx(test_losses, rel=1e-5)
    assert [e.step for e in ea.Scalars("train/loss")] == [0, 1, 2, 3, 4]


def test_tensorboard_without_the_package_is_a_clear_error(in_demo, tmp_path, netspec_log, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without the package
    assert train.main(["--solver", _solver(tmp_path, "tb"), "--tensorboard", str(tmp_path / "tb")]) == 1
    msg = [m for m in netspec_log if "--tensorboard" in m]
    assert msg and "pip install tensorboard" in msg[0] and "--scalars-csv" in msg[0]


def test_progress_bar_shows_on_stderr_and_the_switches_turn_it_off(capsys, monkeypatch):
    bar = cli.progress(range(3), desc="scoring", delay=0, enabled=True)
    assert list(bar) == [0, 1, 2]
    bar.close()
    assert "scoring" in capsys.readouterr().err
    # on a terminal the bar is on by default; a log redirected to a file gets none
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert not isinstance(cli.progress(range(3), desc="scoring", delay=0), range)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(cli.progress(range(3), desc="scoring", delay=0), range)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    for flag in ("--no-progress", "--quiet"):
        cli.parse_args(score_parser_with_defaults(), [flag])
        try:
            plain = cli.progress(range(3), desc="scoring", delay=0)
            assert isinstance(plain, range)
        finally:
            cli.PROGRESS["enabled"] = True


def score_parser_with_defaults():
    import argparse
    p = argparse.ArgumentParser(prog="x.py")
    cli.add_verbosity(p)
    return p


# -- 3: contradictions ------------------------------------------------------------------------------------------
def test_finetuning_is_logged_for_weights_only(in_demo, netspec_log):
    netspec.Net(os.path.join(DEMO, "val.prototxt"), netspec.TEST, weights=str(in_demo / "demo.caffemodel"))
    assert not any("Finetuning" in m for m in netspec_log)  # caffe test / score.py / a resume load weights too


ZERO_NET = """
name: "zeros"
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
layer { name: "trunk" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "score" type: "InnerProduct" bottom: "h" top: "s" inner_product_param { num_output: 4 } }
layer { name: "score2" type: "InnerProduct" bottom: "s" top: "p" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def test_zero_layer_fed_by_a_trained_trunk_is_not_warned_about(caplog):
    # FCN after surgery: zero-initialised score layers fed by the trunk learn; only a zero layer whose every
    # input is zero too (score2, behind score) is warned about
    from netspec.formats import prototxt
    from netspec.solver.solvers import Solver
    sp = prototxt.parse_solver('base_lr: 0.1 lr_policy: "fixed" max_iter: 1 display: 0 snapshot_prefix: ""')
    sp.net_param.CopyFrom(prototxt.parse_net(ZERO_NET))
    s = Solver(sp, device="cpu")
    with caplog.at_level(logging.WARNING, logger="netspec"):
        s.warn_zero_layers()
    msgs = [r.getMessage() for r in caplog.records]
    assert not any("'score'" in m for m in msgs), msgs
    assert any("'score2'" in m and "all-zero inputs" in m for m in msgs), msgs


def test_kitti_road_class_names_are_the_packers():
    from netspec.data import packers
    assert score.known_classes()["kitti_road"] == packers.KITTI_ROAD_CLASSES == ("non-road", "road")


def test_synthetic_says_when_it_kept_existing_data(tmp_path, capsys):
    from netspec.data import synthetic
    root = str(tmp_path / "demo")
    synthetic.main([root, "--train", "3", "--val", "2"])
    assert capsys.readouterr().out.splitlines() == [f"wrote 3 train samples to {root}/train",
                                                    f"wrote 2 val samples to {root}/val"]
    synthetic.main([root, "--train", "3", "--val", "5"])
    out = capsys.readouterr().out
    assert f"kept {root}/train (3 samples, already packed)" in out
    assert f"kept {root}/val: it already holds 2 samples, not the 5 asked for; add --overwrite" in out
    assert synthetic.existing(root, "val") == 2
    synthetic.main([root, "--train", "3", "--val", "5", "--overwrite"])
    assert f"wrote 5 val samples to {root}/val" in capsys.readouterr().out
    assert synthetic.existing(root, "val") == 5


# -- 4: one CLI style ---------------------------------------------------------------------------------------------
PARSERS = {"train.py": train.build_parser, "test.py": test_tool.parser, "score.py": score.parser,
           "infer.py": infer.build_parser, "time.py": timing.build_parser, "draw_net.py": draw_net.parser,
           "plot_log.py": plot_log.parser}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_and_quiet_means_warnings_only(name):
    p = PARSERS[name]()
    assert p.prog == name
    for a in p._actions:
        assert a.help, (name, a.option_strings or a.dest)
        if "--quiet" in a.option_strings:
            assert a.help.startswith("log warnings"), (name, a.help)
        if "--no-progress" in a.option_strings:
            assert "progress bar" in a.help


def _tool(name):
    """tools/<name>.py as a module (its main() runs in this process)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("tool", ["compute_image_mean", "convert_imageset", "build_seg_lmdb", "convert_caffemodel"])
def test_script_help_names_the_script_and_explains_every_argument(tool, capsys):
    with pytest.raises(SystemExit) as e:
        _tool(tool).main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {tool}.py ")
    body = out.split("\n\n", 1)[1]
    for m in re.finditer(r"^  (\S+)\s*$", body, re.M):  # an argument listed with no help text beside or below
        nxt = body[m.end():].split("\n", 2)[1] if "\n" in body[m.end():] else ""
        assert nxt.startswith(" " * 10), (tool, m.group(1))
    if tool in ("compute_image_mean", "convert_imageset", "build_seg_lmdb"):
        assert "--no-progress" in out and "log warnings" in out


def test_caffe_spellings_and_underscore_aliases():
    p = train.build_parser()
    argv = cli.caffe_spellings(["-solver", "s.prototxt", "-gpu=0", "-snapshot", "x.solverstate",
                                "--sigint_effect", "snapshot", "-sighup_effect=none", "-weird"], p)
    assert argv == ["--solver", "s.prototxt", "--gpu=0", "--snapshot", "x.solverstate", "--sigint_effect",
                    "snapshot", "--sighup_effect=none", "-weird"]
    a = p.parse_args(argv[:-1])
    assert (a.solver, a.gpu, a.snapshot, a.sigint_effect, a.sighup_effect) == \
        ("s.prototxt", "0", "x.solverstate", "snapshot", "none")
    assert p.parse_args(["--solver", "s", "--sigint-effect", "none"]).sigint_effect == "none"
    t = test_tool.parser()
    a = t.parse_args(cli.caffe_spellings(["-model", "m", "-weights", "w", "-iterations", "7"], t))
    assert (a.model, a.weights, a.iterations) == ("m", "w", 7)


def test_convert_caffemodel_takes_model_like_the_other_tools(tmp_path, in_demo):
    out = tmp_path / "w.pt"
    rc = _tool("convert_caffemodel").main([str(in_demo / "demo.caffemodel"), str(out), "--model",
                                           os.path.join(DEMO, "deploy.prototxt"), "-q"])
    assert rc == 0
    import torch
    sd = torch.load(str(out), weights_only=True)
    net = netspec.Net(os.path.join(DEMO, "deploy.prototxt"), netspec.TEST, weights=str(in_demo / "demo.caffemodel"))
    np.testing.assert_array_equal(sd["conv1_1.weight"].numpy(), net.params["conv1_1"][0].data)


# -- 5: polish ----------------------------------------------------------------------------------------------------
def test_gitignore_covers_the_readme_outputs():
    r = subprocess.run(["git", "check-ignore", "demo.onnx", "demo.pt", "masks/color/a.png", "data/demo/x"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.split() == ["demo.onnx", "demo.pt", "masks/color/a.png", "data/demo/x"]


def test_snapshot_reports_its_bytes_to_a_progress_bar(tmp_path, monkeypatch):
    from netspec.formats import prototxt
    from netspec.solver.solvers import Solver
    calls = []

    class Bar:
        def __init__(self, total, **kw):
            calls.append(("open", total, kw["desc"]))

        def update(self, n):
            calls.append(("update", n))

        def close(self):
            calls.append(("close",))
    monkeypatch.setattr(netspec.progress, "progress_bar", Bar)
    sp = prototxt.parse_solver(f'base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 max_iter: 1 display: 0 '
                               f'snapshot_prefix: "{tmp_path}/s"')
    sp.net_param.CopyFrom(prototxt.parse_net(ZERO_NET))
    s = Solver(sp, device="cpu")
    model, state = s.snapshot()
    n = 4 * sum(b.data.size for bl in s.net.params.values() for b in bl)  # float32 weights; SGD history: as many
    assert calls == [("open", 2 * n, "snapshot"), ("update", n), ("update", n), ("close",)]
    assert os.path.exists(model) and os.path.exists(state)
