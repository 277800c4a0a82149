"""The library behind ``tools/*.py``: one module per tool, named after it (``tools/score.py`` runs
``netspec.tools.score.main``: ``train``, ``test``, ``score``, ``infer``, ``time``, ``draw_net``, ``plot_log``), and
their shared plumbing (``cli``). The scripts stay thin; import these to call a tool from Python."""
