"""Cache keys: deterministic across processes, sensitive to every ingredient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import compressc
from compressc.driver.key import (
    cache_key,
    canonical_json,
    compiler_sources,
    hash_ingredients,
    key_ingredients,
    source_fingerprint,
)

BASE = {
    "spec_ir_text": 'module @c4a {\n  pool "x"\n}\n',
    "pipeline": "thread-map,vectorize{bits=128}",
    "arch": "sm_90a",
    "options": "cute.compile: --gpu-arch sm_90a",
    "compressc_version": "0.1.0",
    "source_fingerprint": "ab" * 32,
    "toolchain": {"cutlass_dsl": "4.8.1", "flavor": "cu13", "nvjitlink": "13.5.37"},
}
CHANGED = {
    "spec_ir_text": 'module @c4a {\n  pool "y"\n}\n',
    "pipeline": "thread-map{elems-per-lane=4},vectorize{bits=128}",
    "arch": "sm_100a",
    "options": "cute.compile: --gpu-arch sm_90a --lineinfo",
    "compressc_version": "0.1.1",
    "source_fingerprint": "cd" * 32,
    "toolchain": {"cutlass_dsl": "4.8.2", "flavor": "cu13", "nvjitlink": "13.5.37"},
}
POSITIONAL = ("spec_ir_text", "pipeline", "arch", "options")


def key_of(values: dict) -> str:
    args = [values[name] for name in POSITIONAL]
    return cache_key(*args, **{k: v for k, v in values.items() if k not in POSITIONAL})


def test_key_is_a_sha256_hex_digest() -> None:
    key = key_of(BASE)
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == key_of(dict(BASE))


@pytest.mark.parametrize("ingredient", sorted(CHANGED))
def test_each_ingredient_changes_the_key(ingredient: str) -> None:
    assert key_of({**BASE, ingredient: CHANGED[ingredient]}) != key_of(BASE)


@pytest.mark.parametrize("field", ["cutlass_dsl", "flavor", "nvjitlink", "cutlass_dsl_libs"])
def test_each_toolchain_field_changes_the_key(field: str) -> None:
    toolchain = {**BASE["toolchain"], field: "other"}
    assert key_of({**BASE, "toolchain": toolchain}) != key_of(BASE)


def test_arch_spellings_share_a_key() -> None:
    assert key_of({**BASE, "arch": "sm90"}) == key_of({**BASE, "arch": "90a"}) == key_of(BASE)


def test_toolchain_order_does_not_matter() -> None:
    reordered = dict(reversed(list(BASE["toolchain"].items())))
    assert key_of({**BASE, "toolchain": reordered}) == key_of(BASE)


def test_ingredients_name_everything_and_hash_to_the_key() -> None:
    args = [BASE[name] for name in POSITIONAL]
    ingredients = key_ingredients(*args, **{k: v for k, v in BASE.items() if k not in POSITIONAL})
    assert set(ingredients) == {
        "key_format",
        "spec_ir",
        "pipeline",
        "arch",
        "options",
        "compressc_version",
        "source_fingerprint",
        "toolchain",
    }
    assert hash_ingredients(ingredients) == key_of(BASE)
    assert json.loads(canonical_json(ingredients)) == ingredients


def test_canonical_json_is_compact_and_sorted() -> None:
    assert canonical_json({"b": 1, "a": ["é", 2]}) == '{"a":["é",2],"b":1}'.encode()


def test_same_key_in_separate_processes() -> None:
    code = (
        "import json, sys\n"
        "from compressc.driver.key import cache_key\n"
        "v = json.loads(sys.argv[1])\n"
        "print(cache_key(v.pop('spec_ir_text'), v.pop('pipeline'), v.pop('arch'), v.pop('options'), **v))\n"
    )
    root = str(Path(compressc.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": root, "PYTHONHASHSEED": "random"}
    keys = {
        subprocess.run(
            [sys.executable, "-c", code, json.dumps(BASE)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for _ in range(2)
    }
    assert keys == {key_of(BASE)}


def _tree(root: Path) -> Path:
    for rel, text in {
        "ir/core.py": "A = 1\n",
        "ir/sub/deep.py": "B = 2\n",
        "passes/vectorize.py": "C = 3\n",
        "kernels/emitter.py": "D = 4\n",
        "specs/family.py": "E = 5\n",
        "driver/compile.py": "F = 6\n",
        "cache/store.py": "G = 7\n",
        "runtime/loader.py": "H = 8\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_fingerprint_covers_the_compiler_sources(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    names = [p.relative_to(root).as_posix() for p in compiler_sources(root)]
    assert names == [
        "driver/compile.py",
        "ir/core.py",
        "ir/sub/deep.py",
        "kernels/emitter.py",
        "passes/vectorize.py",
        "specs/family.py",
    ]
    before = source_fingerprint(root)
    (root / "ir/sub/deep.py").write_text("B = 3\n")
    assert source_fingerprint(root) != before


@pytest.mark.parametrize(
    "rel", ["cache/store.py", "runtime/loader.py", "ir/notes.txt", "ir/__pycache__/x.pyc"]
)
def test_fingerprint_ignores_other_files(tmp_path: Path, rel: str) -> None:
    root = _tree(tmp_path)
    before = source_fingerprint(root)
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text("changed\n")
    assert source_fingerprint(root) == before


def test_fingerprint_sees_a_rename(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = source_fingerprint(root)
    (root / "passes/vectorize.py").rename(root / "passes/vectorise.py")
    assert source_fingerprint(root) != before


def test_fingerprint_of_the_installed_package_is_stable() -> None:
    assert source_fingerprint() == source_fingerprint() != source_fingerprint(Path("/nonexistent"))
