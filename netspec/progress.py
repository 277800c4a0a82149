"""Progress bars for long passes (test passes, scoring, snapshots, packing): tqdm on stderr, behind one
process-wide switch. Base utility: the solver and the tools both draw them; the tools' ``--no-progress`` and
``--quiet`` (:func:`netspec.tools.cli.parse_args`) turn them off. Imports nothing heavy (tqdm on first bar)."""
import sys
from typing import Optional

#: Whether long passes draw a tqdm bar; the tools' ``--no-progress`` and ``--quiet`` turn it off for the process.
PROGRESS = {"enabled": True}


def progress(iterable=None, *, desc: str, total: Optional[int] = None, unit: str = "it", delay: float = 2.0,
             enabled: Optional[bool] = None):
    """``iterable`` wrapped in a tqdm bar on stderr that appears once the pass has taken ``delay`` seconds
    (short passes draw nothing), unless bars are off (``--no-progress``, ``--quiet``) or stderr is not a
    terminal (a log redirected to a file keeps Caffe's lines only; the pass is announced there)."""
    on = (PROGRESS["enabled"] and sys.stderr.isatty()) if enabled is None else enabled
    if not on:
        return iterable if iterable is not None else range(total or 0)
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, unit=unit, delay=delay, leave=False, file=sys.stderr,
                dynamic_ncols=True)


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def progress_bar(total: int, *, desc: str, unit: str = "it", delay: float = 2.0, enabled: Optional[bool] = None,
                 **kw):
    """A tqdm bar to ``update()`` by hand (work done in a few large steps, such as a snapshot's files), on the
    same terms as :func:`progress`; an object whose update/close do nothing when bars are off."""
    on = (PROGRESS["enabled"] and sys.stderr.isatty()) if enabled is None else enabled
    if not on:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, delay=delay, leave=False, file=sys.stderr, dynamic_ncols=True,
                **kw)
