"""netspec.tools.cli: the exit codes and message every tool gives on bad input (run_tool); the shared --proto
option (a fork's caffe.proto for nets that use its fields)."""
import importlib.util
import os
import subprocess
import sys

import pytest

from netspec import proto
from netspec.tools import time as timing
from netspec.tools.cli import run_tool
from netspec.errors import FormatError


def test_exit_codes_and_message(capsys):
    assert run_tool(lambda: None) == 0
    assert run_tool(lambda: 3) == 3

    def bad():
        raise FormatError("x.caffemodel: not a caffemodel")
    assert run_tool(bad) == 1
    assert capsys.readouterr().err == "error: x.caffemodel: not a caffemodel\n"

    def missing():
        open("/nonexistent/dir/file")
    assert run_tool(missing) == 1
    assert capsys.readouterr().err.startswith("error: [Errno 2]")


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

needs_protoc = pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="needs grpcio-tools")

NET = """name: "fork"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv"
        my_norm_param { across_spatial: false eps: 1e-5 } }
"""


@pytest.fixture
def fork(tmp_path):
    """A fork's caffe.proto (the bundled one plus a field of its own, my_norm_param) and a net that uses it."""
    src = open(os.path.join(ROOT, "netspec", "proto", "caffe.proto")).read()
    at = src.index("  optional CropParameter crop_param = 144;")
    (tmp_path / "caffe.proto").write_text(
        src[:at] + "  optional MyNormParameter my_norm_param = 3001;\n" + src[at:]
        + "\nmessage MyNormParameter {\n  optional bool across_spatial = 1 [default = true];\n"
          "  optional float eps = 4 [default = 1e-10];\n}\n")
    (tmp_path / "net.prototxt").write_text(NET)
    yield tmp_path
    proto.reset_proto()


@needs_protoc
def test_proto_option_reads_a_forks_fields(fork, capsys):
    assert timing.main(["--model", str(fork / "net.prototxt"), "--iterations", "1", "--quiet"]) != 0
    assert "my_norm_param" in capsys.readouterr().err
    rc = timing.main(["--proto", str(fork / "caffe.proto"), "--model", str(fork / "net.prototxt"),
                      "--iterations", "1", "--quiet"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "conv" in table and "relu" in table
    assert "MyNormParameter" in proto.caffe_pb2.DESCRIPTOR.message_types_by_name


@needs_protoc
def test_upgrade_tool_keeps_the_forks_fields(fork):
    out = fork / "out.prototxt"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "upgrade_net_proto.py"), "--proto",
                        str(fork / "caffe.proto"), str(fork / "net.prototxt"), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "my_norm_param" in out.read_text() and "across_spatial: false" in out.read_text()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "upgrade_net_proto.py"),
                        str(fork / "net.prototxt"), str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1  # the net is wrong for the schema in use: the work failed (2 is a wrong command line)
    assert "my_norm_param" in r.stderr and "--proto" in r.stderr and "net.prototxt:7" in r.stderr


def test_missing_proto_file_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "upgrade_net_proto.py"), "--proto",
                        str(tmp_path / "nope.proto"), "a.prototxt", "b.prototxt"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "error: --proto" in r.stderr and "nope.proto: no such file" in r.stderr


def test_strict_weights_flag_and_dialect_are_set_afresh_by_each_tool_run(tmp_path):
    import argparse
    from netspec.net import runtime
    from netspec.tools.cli import parse_args

    def parser():
        p = argparse.ArgumentParser(prog="x.py")
        p.add_argument("--weights")
        return p
    parse_args(parser(), ["--weights", "w", "--strict-weights", "--dialect", "PSPNet"])
    assert runtime.strict_weights() and runtime.dialect() == "pspnet"
    parse_args(parser(), ["--weights", "w"])
    assert not runtime.strict_weights() and runtime.dialect() is None
    with pytest.raises(SystemExit):
        parse_args(parser(), ["--dialect", "nonesuch"])


def test_every_tool_answers_help_without_importing_torch():
    """`tools/*.py --help` (issue #19: under 0.5 s) must not import torch, which alone takes about a second."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    probe = ("import runpy, sys\nsys.argv = [sys.argv[1], '--help']\ntry:\n    runpy.run_path(sys.argv[0], "
             "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    heavy = []
    for tool in sorted((root / "tools").glob("*.py")):
        r = subprocess.run([sys.executable, "-c", probe, str(tool)], capture_output=True, text=True, cwd=root,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        if r.stdout.strip().splitlines()[-1] != "NO-TORCH":
            heavy.append(tool.name)
    assert heavy == [], f"these tools import torch for --help: {heavy}"
    from netspec.interop import export
    assert f"default {export.DEFAULT_OPSET}" in subprocess.run(
        [sys.executable, str(root / "tools" / "export_onnx.py"), "--help"], capture_output=True, text=True).stdout
