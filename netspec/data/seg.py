"""Moved: ``SegDataLayer`` (the LMDB image/label pair layer) is :mod:`netspec.layers.seg_lmdb` now; data layers
live with the layers and ``netspec.data`` stays plain data.

Prototxts that say ``python_param { module: "netspec.data.seg" layer: "SegDataLayer" }`` keep working: the
layer is built in under that name (:data:`netspec.layers.python.BUILTIN`), so they do not import this module.
This name stays importable for code written against it; importing :mod:`netspec.data` does not import it.
The demo set's auto-packing moved to the demo tooling (:func:`netspec.authoring.zoo.demo.pack_missing_data`).
"""
from ..layers.seg_lmdb import SegDataLayer, check_param_str  # noqa: F401
from .synthetic import DEMO_ROOT  # noqa: F401  (the demo set's root: netspec.data.synthetic's now)
