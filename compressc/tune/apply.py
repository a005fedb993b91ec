"""`compressc tune --apply RESULTS.json`: record each variant's winner in the tuned table."""

from __future__ import annotations

import json
from pathlib import Path

from compressc.passes.tuned import load_tuned, merge_winners, write_tuned


class ApplyError(ValueError):
    """The results file cannot be applied; the message names the file and the problem."""


def winners(results: dict, source: Path) -> tuple[str, dict[str, dict]]:
    """(arch, {variant: entry}) of a `tune --measure` results document, each winner re-verified."""
    try:
        arch, variants = results["arch"], results["variants"]
    except (KeyError, TypeError):
        raise ApplyError(
            f"{source}: not a `compressc tune --measure` results file (no arch/variants)"
        ) from None
    out = {}
    for v in variants:
        win = v["winner"]
        _check_legal(v, win["pipeline"], source)
        entry = {
            k: win[k] for k in ("pipeline", "score_us", "derived_score_us", "baseline_score_us") if k in win
        }
        out[v["variant"]] = entry | {
            "gpu": results.get("gpu", "unknown"),
            "date": results.get("date", "unknown"),
        }
    return arch, out


def _check_legal(v: dict, pipeline: str, source: Path) -> None:
    """The winner must still lower and verify for its variant with today's passes."""
    from compressc.ir.from_spec import module_from_spec
    from compressc.ir.verifier import VerifyError
    from compressc.passes.manager import PassManager, PipelineError, parse_pipeline
    from compressc.specs.family import make_spec

    spec = make_spec(
        v["kernel"], v["head_size"], v["quant_block"], rope=v["rope"], weight_dtype=v["weight_dtype"]
    )
    try:
        PassManager(parse_pipeline(pipeline)).run(module_from_spec(spec))
    except (VerifyError, PipelineError) as err:
        first = str(err).splitlines()[0]
        raise ApplyError(
            f"{source}: the winner of {v['variant']} is no longer legal ({first}); measure again"
        ) from None


def apply(results_path: Path, data_path: Path | None = None) -> tuple[Path, str, dict[str, dict]]:
    """Merge the winners of `results_path` into the tuned table; returns (file, arch, winners)."""
    try:
        results = json.loads(Path(results_path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ApplyError(f"{results_path}: cannot read it as JSON ({err})") from None
    arch, wins = winners(results, Path(results_path))
    table = merge_winners(load_tuned(data_path), arch, wins)
    return write_tuned(table, data_path), arch, wins
