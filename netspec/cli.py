"""What every command-line tool shares: how a bad input ends the run."""
import sys

from .errors import NetspecError


def run_tool(body) -> int:
    """Run a tool's work; a netspec error prints ``error: ...`` and exits 2, an OS error (missing file,
    permissions, full disk) exits 1. ``body()`` may return an exit code; None means 0."""
    try:
        return body() or 0
    except NetspecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
