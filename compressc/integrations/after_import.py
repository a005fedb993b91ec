"""Run a callback right after a module is imported, without importing it now.

A plugin that patches `vllm...sparse_attn_compress_cutedsl` must not import it itself: that
module imports nvidia-cutlass-dsl and compiles nothing until vLLM needs it. A meta-path
finder placed first sees the import, lets the other finders find the module, and wraps its
loader so that `exec_module` runs the callbacks once the module body has run (before the
importing statement binds any name from it). An already-imported module gets its
callbacks at once.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
from collections.abc import Callable
from types import ModuleType

Callback = Callable[[ModuleType], None]
log = logging.getLogger("vllm.compressc")


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader another finder returns for a watched name."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callback]] = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.callbacks:
            return None
        spec = _find_elsewhere(self, fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _CallbackLoader(spec.loader, self.callbacks.pop(fullname))
        return spec


def _find_elsewhere(skip: object, fullname: str, path, target):
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if finder is skip or find is None:
            continue
        spec = find(fullname, path, target)
        if spec is not None:
            return spec
    return None


class _CallbackLoader(importlib.abc.Loader):
    """The found loader, with the callbacks run after its exec_module."""

    def __init__(self, inner: importlib.abc.Loader, callbacks: list[Callback]) -> None:
        self.inner, self.callbacks = inner, callbacks

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        run_callbacks(module, self.callbacks)

    def __getattr__(self, name: str):  # get_source, get_filename, ... as the inner loader has them
        return getattr(self.inner, name)


def run_callbacks(module: ModuleType, callbacks: list[Callback]) -> None:
    """Each callback on `module`; one that fails is logged and must not break the import."""
    for callback in callbacks:
        try:
            callback(module)
        except Exception:
            log.warning("compressc: patching %s failed; vLLM's own kernels stay in place", module.__name__,
                        exc_info=True)


_FINDER = _AfterImportFinder()


def when_imported(name: str, callback: Callback) -> None:
    """Call `callback(module)` once `name` is imported (now, if it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        run_callbacks(module, [callback])
        return
    _FINDER.callbacks.setdefault(name, []).append(callback)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def pending() -> dict[str, int]:
    """Watched modules not imported yet, with their number of callbacks."""
    return {name: len(cbs) for name, cbs in _FINDER.callbacks.items()}
