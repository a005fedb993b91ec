"""Build orchestration: compile the plans the store lacks, check each cubin, publish the entries.

`plan` (driver/plan.py) lowers, emits and keys a kernel without cutlass; this module runs the
compiler (driver/compile.py) on what the store lacks, under the key's lock, checks the cubin's
ABI against the lowered module's launch record (driver/cubin.py) and publishes the entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from compressc.cache.store import KERNEL_SOURCE
from compressc.driver.plan import BuildPlan, plan
from compressc.specs.family import KernelSpec


def entry_files(p: BuildPlan, artifacts) -> tuple[dict, dict[str, bytes | str]]:
    """The manifest and files of a finished build, after checking the cubin's ABI."""
    from compressc.cache.manifest import make_manifest
    from compressc.driver.compile import CompileError, toolchain_fingerprint
    from compressc.driver.cubin import check_cubin

    launch = p.launch
    if (artifacts.entry, tuple(artifacts.block)) != (launch.entry, launch.block):
        raise CompileError(f"{p.label}: the compiled module's entry {artifacts.entry!r} and block "
                           f"{artifacts.block} differ from the lowered module's "
                           f"{launch.entry!r}, {launch.block}")
    check_cubin(artifacts.cubin, launch.entry, list(launch.params), launch.block, arch=p.arch)
    manifest = make_manifest(key=p.key, kernel=p.spec.kernel, variant=p.spec.variant, launch=launch,
                             artifacts=artifacts, toolchain=toolchain_fingerprint(), pipeline=p.pipeline)
    files: dict[str, bytes | str] = {
        "kernel.cubin": artifacts.cubin,
        "spec.cir": p.spec_ir,
        "lowered.cir": p.lowered_ir,
        KERNEL_SOURCE: p.source,
        "kernel.ptx": artifacts.ptx,
        "jitlink.log": artifacts.log,
    }
    if p.ingredients:  # the exact bytes hashed into the key, for `compressc cache why`
        files["key.json"] = p.ingredients
    return manifest, files


def build_plans(plans: Sequence[BuildPlan], store, workers: int,
                on_done: Callable[[BuildPlan, object, bool], None] | None = None) -> dict[str, object]:
    """Compile the plans whose key the store lacks; publish each as it finishes.

    Returns key -> Entry (cached or built) or the exception that stopped it;
    `on_done(plan, outcome, built)` says whether this run compiled it. A key is
    compiled under its lock (locks/<key>.lock, the runtime JIT's lock too), so N
    processes building one variant into one cache compile it once: a key locked by
    another process is waited for after this run's own compiles, then found. A cached
    default build gets its index back if a kill or another pipeline's build took it.
    """
    results: dict[str, object] = {}
    _Run(store, workers, on_done, results).run(plans)
    return results


class _Run:
    """One build_plans call: which keys it holds the lock of, which it waits for."""

    def __init__(self, store, workers: int, on_done, results: dict[str, object]) -> None:
        self.store, self.workers, self.on_done, self.results = store, workers, on_done, results
        self.held: dict[str, int] = {}

    def run(self, plans: Sequence[BuildPlan]) -> None:
        todo, waiting = [], []
        try:
            for p in plans:
                entry = self.store.get(p.key)
                if entry is None and not self.store.readonly:
                    entry = self._lock_or_find(p, waiting)
                if entry is not None:
                    self._cached(p, entry)
                elif not waiting or waiting[-1] is not p:
                    todo.append(p)
            self._compile(todo)
            for p in waiting:
                self._wait_then_build(p)
        finally:
            for key in list(self.held):
                self._release(key)

    def _lock_or_find(self, p: BuildPlan, waiting: list[BuildPlan]):
        """Take the key's lock (None: compile it) or queue it behind its holder."""
        from compressc.cache.lock import try_lock

        fd = try_lock(self.store.lock_path(p.key))
        if fd is None:
            waiting.append(p)
            return None
        self.held[p.key] = fd
        entry = self.store.get(p.key)  # published by another process before we locked
        if entry is not None:
            self._release(p.key)
        return entry

    def _wait_then_build(self, p: BuildPlan) -> None:
        from compressc.cache.lock import LockTimeoutError, acquire

        try:
            self.held[p.key] = acquire(self.store.lock_path(p.key), self.store.lock_timeout)
        except LockTimeoutError as err:  # a stuck holder fails this kernel, not the whole build
            self.results[p.key] = err
            if self.on_done:
                self.on_done(p, err, False)
            return
        entry = self.store.get(p.key)
        if entry is not None:
            self._release(p.key)
            self._cached(p, entry)
        else:
            self._compile([p])

    def _release(self, key: str) -> None:
        from compressc.cache.lock import release

        release(self.held.pop(key))

    def _cached(self, p: BuildPlan, entry) -> None:
        if p.serves and not self.store.readonly:
            self.store.point_index(entry)
        self.results[p.key] = entry
        if self.on_done:
            self.on_done(p, entry, False)

    def _compile(self, todo: list[BuildPlan]) -> None:
        from compressc.driver.compile import compile_many

        by_key = {p.key: p for p in todo}

        def publish(key: str, outcome: object) -> None:
            p = by_key[key]
            if not isinstance(outcome, BaseException):
                try:
                    manifest, files = entry_files(p, outcome)
                    outcome = self.store.publish(key, manifest, files, index=p.serves)
                except Exception as err:  # a cubin that fails its ABI check is a failed build
                    outcome = err
            if key in self.held:
                self._release(key)
            self.results[key] = outcome
            if self.on_done:
                self.on_done(p, outcome, True)

        compile_many([(p.key, p.source, p.arch) for p in todo], self.workers, publish)


def build_one(spec: KernelSpec, arch: str, *, pipeline: str = "default", store=None):
    """Build (or find) one kernel now, in this process's workers; returns the store Entry."""
    from compressc.cache.store import Store
    from compressc.config import Config

    store = store or Store(Config.from_env().cache_dir)
    p = plan(spec, arch, pipeline)
    outcome = store.get_or_build(p.key, lambda: _compile_and_publish(p, store))
    return outcome


def _compile_and_publish(p: BuildPlan, store):
    from compressc.driver.compile import compile_source

    manifest, files = entry_files(p, compile_source(p.source, p.arch))
    return store.publish(p.key, manifest, files, index=p.serves)
