"""Caffe's solvers (``solvers``: the lr policies, the six update rules, the test hooks), their snapshot files
(``snapshot``), the exact-resume sidecar (``train_state``) and the segmentation scores (``metrics``; ``seg_scores``,
the test hook that prints FCN score.py's lines after training).

``from netspec.solver import get_solver, SGDSolver`` keeps working: names not defined here come from ``solvers``.
"""


def __getattr__(name):
    import sys
    from .solvers import Solver  # noqa: F401  ("from . import solvers" would ask this function for the module first)
    try:
        return getattr(sys.modules[f"{__name__}.solvers"], name)
    except AttributeError:
        raise AttributeError(f"module 'netspec.solver' has no attribute '{name}'") from None
