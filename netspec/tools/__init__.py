"""The library behind ``tools/*.py``: one module per tool (``train``, ``evaluate``, ``infer``, ``timing``) and
their shared plumbing (``cli``). The scripts stay thin; import these to call a tool from Python."""
