"""Solver paths resolve as Caffe does (working directory), falling back to the solver file's directory."""
import logging

from netspec.solver.solvers import Solver


def test_paths_relative_to_the_solver_file_are_used_when_cwd_lacks_them(tmp_path, monkeypatch, caplog,
                                                                      tiny_net_text):
    d = tmp_path / "exp"
    d.mkdir()
    for name in ("train.prototxt", "a.prototxt", "b.prototxt"):   # the input layer renamed in_t, in_a, in_b
        (d / name).write_text(tiny_net_text(loss=True).replace('name: "data"', f'name: "in_{name[0]}"'))
    (d / "solver.prototxt").write_text('train_net: "train.prototxt"\ntest_net: "a.prototxt"\n'
                                       'test_net: "b.prototxt"\ntest_iter: 1\ntest_iter: 1\n'
                                       'test_interval: 10\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="netspec"):
        s = Solver("exp/solver.prototxt")
    assert [n.module.nodes[0].name for n in s.test_nets] == ["in_a", "in_b"]   # both test nets, not just the first
    assert s.net.module.nodes[0].name == "in_t"
    warnings = [r.getMessage() for r in caplog.records if "relative to the solver file" in r.getMessage()]
    assert len(warnings) == 2          # once per kind of path: train_net, test_net
