"""Extract, by AST, the part of vLLM's DeepSeek-V4 interface compressc's plugin depends on.

    python tests/tools/extract_vllm_interface.py SOURCE [--out tests/data/vllm_dsv4_interface.json]

SOURCE is a vLLM wheel (.whl), an unpacked wheel or site directory (holding `vllm/`), or
omitted for the `vllm` installed in this interpreter (located, not imported: its
dependencies need not be installed). Parsing the source, not importing it, lets this run
on a machine without a GPU, CUDA, triton or cutlass.

Read: the signatures of the callables the plugin replaces, which module binds each name
(defined, imported at module load, imported inside a function), every call site of those
names in `vllm/models/deepseek_v4` with its keywords (and, for the compressor's call through
`compress_norm_rope_store_fn`, the extra keywords of each branch), the general-plugin entry
point group and the JitWarmupRegistry methods. Kernel bodies are never read: only `def`
headers, imports, assignments of the patched names and call keywords.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import sys
import zipfile
from pathlib import Path

PATCHED = ("_SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL", "compress_norm_rope_store_cutedsl",
           "compress_norm_rope_store_triton")
MODULES = {
    "cute": "vllm/models/deepseek_v4/nvidia/ops/sparse_attn_compress_cutedsl.py",
    "triton": "vllm/models/deepseek_v4/common/ops/fused_compress_quant_cache.py",
    "compressor": "vllm/models/deepseek_v4/compressor.py",
    "hw_agnostic": "vllm/models/deepseek_v4/hw_agnostic/attention/compressor.py",
}
PLUGINS = "vllm/plugins/__init__.py"
WARMUP = "vllm/model_executor/warmup/jit_warmup.py"
MODEL_DIR = "vllm/models/deepseek_v4/"
DISPATCH_VAR = "compress_norm_rope_store_fn"


class Source:
    """Files of a vLLM tree, from a wheel or a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.zip = zipfile.ZipFile(root) if root.suffix == ".whl" else None

    def names(self) -> list[str]:
        if self.zip is not None:
            return sorted(n for n in self.zip.namelist() if n.endswith(".py"))
        return sorted(str(p.relative_to(self.root)) for p in (self.root / "vllm").rglob("*.py"))

    def read(self, name: str) -> str | None:
        try:
            if self.zip is not None:
                return self.zip.read(name).decode()
            return (self.root / name).read_text()
        except (KeyError, FileNotFoundError):
            return None

    def version(self) -> str:
        text = self.read("vllm/_version.py") or ""
        match = re.search(r"""(?:__version__|version)\s*(?::\s*str\s*)?=\s*['"]([^'"]+)['"]""", text)
        if match:
            return match.group(1)
        return re.sub(r"^vllm-([^-]+)-.*$", r"\1", self.root.name)


def signature(fn: ast.FunctionDef, drop_self: bool) -> dict:
    args = fn.args
    params = [a.arg for a in args.posonlyargs + args.args][1 if drop_self else 0:]
    defaults = dict(zip(params[len(params) - len(args.defaults):], (ast.unparse(d) for d in args.defaults),
                        strict=True)) if args.defaults else {}
    return {"params": params, "defaults": defaults, "kwonly": [a.arg for a in args.kwonlyargs],
            "varargs": args.vararg is not None, "varkw": args.kwarg is not None}


def bindings(tree: ast.Module, name: str) -> dict | None:
    """How a module binds `name` at top level: a def, an instance of a class, or an import."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return {"kind": "function", **signature(node, drop_self=False)}
        if isinstance(node, ast.Assign) and _assigns(node, name):
            return _instance(tree, node.value)
        if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
            return {"kind": "import", "from": node.module}
    return None


def _assigns(node: ast.Assign, name: str) -> bool:
    return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    return next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == name), None)


def _instance(tree: ast.Module, value: ast.expr) -> dict:
    if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)):
        return {"kind": "value"}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == value.func.id:
            call = _method(node, "__call__")
            sig = signature(call, drop_self=True) if call else {}
            return {"kind": "instance", "class": node.name, **sig}
    return {"kind": "instance", "class": value.func.id}


def lazy_imports(tree: ast.Module, module: str) -> list[dict]:
    """Imports of the patched names inside functions of `module` (resolved at call time)."""
    found = []
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names if a.name in PATCHED]
                if names:
                    found.append({"function": fn.name, "from": absolute(node, module), "names": names})
    return found


def absolute(node: ast.ImportFrom, module: str) -> str:
    """The imported module's full name; a relative import counts its dots from `module`'s package."""
    if not node.level:
        return node.module or ""
    package = module.rsplit(".", node.level)[0]
    return f"{package}.{node.module}" if node.module else package


def call_sites(module: str, tree: ast.Module) -> list[dict]:
    """Calls of a patched name (or of the compressor's dispatch variable) and their keywords."""
    sites = []
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(fn):
            callee = _callee(node)
            if callee is None:
                continue
            site = {"module": module, "function": fn.name, "callee": callee,
                    "keywords": [k.arg for k in node.keywords if k.arg is not None],
                    "positional": len(node.args),
                    "star_kwargs": [ast.unparse(k.value) for k in node.keywords if k.arg is None]}
            if callee == DISPATCH_VAR:
                site["branches"] = dispatch_branches(fn)
            sites.append(site)
    return sites


def _callee(node: ast.AST) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return name if name in PATCHED or name == DISPATCH_VAR else None


def dispatch_branches(fn: ast.FunctionDef) -> list[dict]:
    """For each branch that sets the dispatch variable: the callable and its extra keywords."""
    branches = []
    for node in ast.walk(fn):
        if not isinstance(node, ast.If):
            continue
        for body in (node.body, node.orelse):
            callee = _assigned_name(body, DISPATCH_VAR)
            if callee is not None:
                branches.append({"callable": callee, "extra_keywords": _extra_keys(body)})
    return branches


def _assigned_name(body: list[ast.stmt], var: str) -> str | None:
    for stmt in body:
        if isinstance(stmt, ast.Assign) and _assigns(stmt, var):
            return ast.unparse(stmt.value)
    return None


def _extra_keys(body: list[ast.stmt]) -> list[str]:
    for stmt in body:
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else (
            stmt.targets[0] if isinstance(stmt, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "extra_kwargs":
            return _dict_keys(stmt.value)
    return []


def _dict_keys(value: ast.expr | None) -> list[str]:
    if isinstance(value, ast.Dict):
        return [k.value for k in value.keys if isinstance(k, ast.Constant)]
    if isinstance(value, ast.Call) and ast.unparse(value.func) == "dict":
        return [k.arg for k in value.keywords if k.arg is not None]
    return []


def warmup_registry(tree: ast.Module) -> dict:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "JitWarmupRegistry":
            methods = {f.name: signature(f, drop_self=True)["params"] for f in node.body
                       if isinstance(f, ast.FunctionDef)}
            init = ast.unparse(_method(node, "__init__"))
            return {"methods": methods, "sets_vllm_config": "self.vllm_config = vllm_config" in init}
    return {}


def plugin_group(text: str) -> str | None:
    match = re.search(r"""DEFAULT_PLUGINS_GROUP\s*=\s*['"]([^'"]+)['"]""", text)
    return match.group(1) if match else None


def extract(src: Source) -> dict:
    trees = {key: ast.parse(text) for key, path in MODULES.items() if (text := src.read(path)) is not None}
    out: dict = {"vllm_version": src.version(), "source": src.root.name, "modules": {}}
    for key, path in MODULES.items():
        module = path[:-3].replace("/", ".")
        tree = trees.get(key)
        out["modules"][module] = None if tree is None else {
            "bindings": {name: bindings(tree, name) for name in PATCHED if bindings(tree, name)},
            "lazy_imports": lazy_imports(tree, module)}
    out["call_sites"] = [site for name in src.names() if name.startswith(MODEL_DIR)
                         for site in call_sites(name[:-3].replace("/", "."), ast.parse(src.read(name) or ""))]
    out["plugin_group"] = plugin_group(src.read(PLUGINS) or "")
    warm = src.read(WARMUP)
    out["jit_warmup_registry"] = warmup_registry(ast.parse(warm)) if warm else {}
    return out


def _installed() -> Path:
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no SOURCE given and no vllm installed: pass a wheel or a directory holding vllm/")
    return Path(next(iter(spec.submodule_search_locations))).parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", type=Path, help="vLLM wheel, or directory holding vllm/")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout)")
    args = ap.parse_args(argv)
    root = args.source or _installed()
    if not root.exists():
        raise SystemExit(f"{root}: no such file or directory")
    text = json.dumps(extract(Source(root)), indent=1, sort_keys=True) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
