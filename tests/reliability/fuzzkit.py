"""Helpers of the reliability suite: fuzz budgets, outcome counting, per-example time limits.

``NETSPEC_FUZZ_EXAMPLES=N`` is the nightly knob: every fuzz target then runs ``N`` examples (the costly ones,
which build nets or LMDBs per example, ``N // 10``) instead of the small default budget. The counts of every
target (inputs run, successes, NetspecErrors, anything else) are printed at the end of the run and, with
``NETSPEC_FUZZ_REPORT=path.json``, written there.
"""
import collections
import contextlib
import os
import signal

#: target -> Counter(inputs, ok, netspec_error, other)
FUZZ_COUNTS = collections.defaultdict(collections.Counter)


def fuzz_examples(default: int, cost: int = 1) -> int:
    """The number of examples for a fuzz target: ``default``, or ``NETSPEC_FUZZ_EXAMPLES // cost``."""
    env = os.environ.get("NETSPEC_FUZZ_EXAMPLES", "").strip()
    if not env:
        return default
    return max(1, int(env) // cost)


class Hang(Exception):
    """An input took longer than the per-example limit."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str = "input"):
    """Raise :class:`Hang` if the block runs longer than ``seconds`` (SIGALRM; main thread only)."""
    def on_alarm(signum, frame):
        raise Hang(f"{what} ran longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def record(target: str, fn, *args, limit: float = 20.0, **kwargs):
    """Run ``fn``; count the outcome under ``target``. Returns ``(True, result)`` or ``(False, NetspecError)``.

    Anything but success or a :class:`netspec.errors.NetspecError` with a non-empty message is counted as
    ``other`` and re-raised (the test fails and hypothesis shrinks the input).
    """
    from netspec.errors import NetspecError
    counts = FUZZ_COUNTS[target]
    counts["inputs"] += 1
    try:
        with time_limit(limit, target):
            result = fn(*args, **kwargs)
    except NetspecError as e:
        if not str(e).strip():
            counts["other"] += 1
            raise AssertionError(f"{target}: {type(e).__name__} with an empty message") from e
        counts["netspec_error"] += 1
        return False, e
    except BaseException:
        counts["other"] += 1
        raise
    counts["ok"] += 1
    return True, result
