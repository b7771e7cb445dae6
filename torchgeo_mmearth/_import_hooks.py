"""Run registry work when the module it fills is imported, not before.

``import torchgeo_mmearth`` registers the plugin's models with timm and
segmentation-models-pytorch and its weights with TorchGeo's model API, whose
imports cost seconds. Whoever uses one of them imports it; until then the
registration can wait.
"""

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

__all__ = ('when_imported',)


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call *callback* with module *name* once it is imported (now if it is).

    Args:
        name: the module's full name, e.g. ``'torchgeo.models.api'``.
        callback: called once with the module, right after the module's own code
            ran and before the import statement that loaded it returns.
    """
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
    else:
        sys.meta_path.insert(0, _AfterImport(name, callback))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds *name* with the other finders and runs a callback after loading it."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.callback = callback
        self.finding = False

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        # Not while asking the other finders (two hooks on one name would recurse).
        if fullname != self.name or self.finding:
            return None
        # The hook stays until the module is loaded: importlib.util.find_spec (how
        # Lightning and others probe optional packages) finds without loading.
        self.finding = True
        try:
            spec: importlib.machinery.ModuleSpec | None = None
            for finder in sys.meta_path:
                find_spec = getattr(finder, 'find_spec', None)
                spec = find_spec(fullname, path, target) if find_spec else None
                if spec is not None:
                    break
        finally:
            self.finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _CallbackLoader(spec.loader, self)
        return spec


class _CallbackLoader(importlib.abc.Loader):
    """Loads with *loader*, then calls back; the module keeps *loader*."""

    def __init__(self, loader: importlib.abc.Loader, hook: _AfterImport) -> None:
        self.loader = loader
        self.hook = hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        # Once only; a module whose import failed is called back on the retry.
        if self.hook in sys.meta_path:
            sys.meta_path.remove(self.hook)
            self.hook.callback(module)
