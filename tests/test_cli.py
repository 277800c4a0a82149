"""netspec.cli.run_tool: the exit codes and message every tool gives on bad input."""
from netspec.cli import run_tool
from netspec.errors import FormatError


def test_exit_codes_and_message(capsys):
    assert run_tool(lambda: None) == 0
    assert run_tool(lambda: 3) == 3

    def bad():
        raise FormatError("x.caffemodel: not a caffemodel")
    assert run_tool(bad) == 2
    assert capsys.readouterr().err == "error: x.caffemodel: not a caffemodel\n"

    def missing():
        open("/nonexistent/dir/file")
    assert run_tool(missing) == 1
    assert capsys.readouterr().err.startswith("error: [Errno 2]")
