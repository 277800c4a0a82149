"""Where the modules of netspec 0.1 live now, so that ``import netspec.prototxt`` (and every other old path)
still gives the module: a fixed table, resolved on first import. ``netspec.net`` and ``netspec.solver`` became
packages that forward their old names themselves.
"""
import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "netspec.atomic": "netspec.formats.atomic",
    "netspec.binary": "netspec.formats.binary",
    "netspec.blob": "netspec.net.blob",
    "netspec.cli": "netspec.tools.cli",
    "netspec.convert": "netspec.interop.convert",
    "netspec.coord_map": "netspec.authoring.coord_map",
    "netspec.coords": "netspec.layers.coords",
    "netspec.dialects": "netspec.passes.dialects",
    "netspec.dsl": "netspec.authoring.dsl",
    "netspec.evaluate": "netspec.tools.score",
    "netspec.export": "netspec.interop.export",
    "netspec.fillers": "netspec.layers.fillers",
    "netspec.fold": "netspec.net.fold",
    "netspec.graph": "netspec.passes.graph",
    "netspec.graph_module": "netspec.net.caffe_net",
    "netspec.infer": "netspec.tools.infer",
    "netspec.metrics": "netspec.solver.metrics",
    "netspec.prototxt": "netspec.formats.prototxt",
    "netspec.runtime": "netspec.net.runtime",
    "netspec.surgery": "netspec.authoring.surgery",
    "netspec.timing": "netspec.tools.time",
    "netspec.train": "netspec.tools.train",
    "netspec.train_state": "netspec.solver.train_state",
    "netspec.upgrade": "netspec.passes.upgrade",
    "netspec.viz": "netspec.tools.draw_net",
    "netspec.weights": "netspec.net.weights",
    "netspec.zoo": "netspec.authoring.zoo",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    @staticmethod
    def new_name(fullname):
        """``netspec.zoo.fcn`` -> ``netspec.authoring.zoo.fcn``; None for names that did not move."""
        head, _, rest = fullname.partition(".")
        while head:
            if head in MOVED:
                return MOVED[head] + fullname[len(head):]
            if not rest:
                return None
            part, _, rest = rest.partition(".")
            head = f"{head}.{part}"
        return None

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("netspec.") and self.new_name(fullname):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        real = self.new_name(spec.name)
        module = importlib.import_module(real)
        # The package's loaded submodules under the old name too, before anything imports them by it: the import
        # system would otherwise load them again and set each on the package, where a submodule can share its
        # name with a function (the zoo's fcn module and fcn()).
        for name, sub in list(sys.modules.items()):
            if name.startswith(real + "."):
                sys.modules.setdefault(spec.name + name[len(real):], sub)
        return module

    def exec_module(self, module):
        pass


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())  # before the path finder, which would load a second copy under the old name
