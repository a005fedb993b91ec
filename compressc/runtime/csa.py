"""One launch for a CSA layer (docs/kernels.md §12): the main C4A and the indexer compressor
of the same tokens in one fused kernel.

`compress_csa` takes the arguments of the two compressor calls an engine makes for a ratio-4
layer, each prefixed with its part (`main_*`, `indexer_*`), and the two they share
(`token_to_req_indices`, `positions`). Every argument is checked as the single ops check
theirs (`compressc.runtime.validate`), before any lookup, build or launch; an error names
the fused op's argument (`indexer_block_table must ...`). Then one signature-cached launch,
as the single ops make (`compressc.runtime.fastpath`); capture-safe (no host sync).

Above FUSED_MAX_T rows the same prepared launch is the two single kernels (c4a, then the
indexer) instead: measured on the H200 (benchmarks/NOTES.md, session 8) the fused kernel is
ahead of the two launches up to T = 1024 and behind from T = 2048 (its registers are the
larger part's, 118, which halves the C4A part's resident CTAs once every SM is busy). The
choice is made from T alone, so a CUDA graph captures one of the two, as the host picks it.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from threading import get_ident as _thread_id

import torch

from compressc.runtime.fastpath import Prepared, SignatureCache, cacheable_index
from compressc.runtime.ops import _launch, _launch_checked, debug_checks, kernel_for
from compressc.runtime.validate import check_device, nonempty, row_values, state_values, store_values
from compressc.runtime.validate import weight_dtype_name as _weight_name
from compressc.specs.abi import Param, abi
from compressc.specs.csa import INDEXERS, PART_ARGS, PART_NAMES, bound_name, parts
from compressc.specs.errors import SpecError
from compressc.specs.family import make_spec
from compressc.specs.formats import formats_for

# the per-step values patched into a prepared launch (pointers, then counts)
CSA_STEP = (
    "token_to_req_indices",
    "positions",
    "main_slot_mapping",
    "main_block_table",
    "main_kv_slot_mapping",
    "indexer_slot_mapping",
    "indexer_block_table",
    "indexer_kv_slot_mapping",
    "num_rows",
    "num_positions",
    "main_num_kv_slots",
    "indexer_num_kv_slots",
)
_STEP_TENSORS = CSA_STEP[:8]
_SIGNATURES = SignatureCache()
# the most rows a call runs fused; above it, two launches (COMPRESSC_CSA_FUSED_MAX_T overrides)
FUSED_MAX_T = int(os.environ.get("COMPRESSC_CSA_FUSED_MAX_T", "1024"))
_NAMES = re.compile(r"(?<![\w.])(" + "|".join((*PART_ARGS, "fp8_scale")) + r")\b")


def compress_csa(
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    *,
    main_state_cache: torch.Tensor,
    main_slot_mapping: torch.Tensor,
    main_block_table: torch.Tensor,
    main_block_size: int,
    main_rms_norm_weight: torch.Tensor,
    main_rms_norm_eps: float,
    main_cos_sin_cache: torch.Tensor,
    main_k_cache: torch.Tensor,
    main_kv_slot_mapping: torch.Tensor,
    main_kv_cache_block_size: int,
    indexer_state_cache: torch.Tensor,
    indexer_slot_mapping: torch.Tensor,
    indexer_block_table: torch.Tensor,
    indexer_block_size: int,
    indexer_rms_norm_weight: torch.Tensor,
    indexer_rms_norm_eps: float,
    indexer_cos_sin_cache: torch.Tensor,
    indexer_k_cache: torch.Tensor,
    indexer_kv_slot_mapping: torch.Tensor,
    indexer_kv_cache_block_size: int,
    main_cache_format: str = "fp8_ds_mla",
    main_fp8_scale: torch.Tensor | None = None,
    indexer_kernel: str = "indexer_fp8",
    indexer_rotate: bool = False,
) -> None:
    """Write main_k_cache as compress_c4a(cache_format=main_cache_format, fp8_scale=main_fp8_scale)
    and indexer_k_cache as compress_<indexer_kernel>(rotate=indexer_rotate) would, in one launch.
    The `main_*` / `indexer_*` arguments are those calls' arguments of the same name; T =
    main_slot_mapping.numel() rows, and indexer_slot_mapping must have as many."""
    args = {"token_to_req_indices": token_to_req_indices, "positions": positions}
    args |= {
        f"main_{a}": v
        for a, v in zip(
            PART_ARGS,
            (
                main_state_cache,
                main_slot_mapping,
                main_block_table,
                main_block_size,
                main_rms_norm_weight,
                main_rms_norm_eps,
                main_cos_sin_cache,
                main_k_cache,
                main_kv_slot_mapping,
                main_kv_cache_block_size,
            ),
            strict=True,
        )
    }
    args |= {
        f"indexer_{a}": v
        for a, v in zip(
            PART_ARGS,
            (
                indexer_state_cache,
                indexer_slot_mapping,
                indexer_block_table,
                indexer_block_size,
                indexer_rms_norm_weight,
                indexer_rms_norm_eps,
                indexer_cos_sin_cache,
                indexer_k_cache,
                indexer_kv_slot_mapping,
                indexer_kv_cache_block_size,
            ),
            strict=True,
        )
    }
    args["main_fp8_scale"] = main_fp8_scale
    _run(args, (main_cache_format, indexer_kernel, bool(indexer_rotate)))


def csa_arguments(main: dict, indexer: dict, **options: object) -> dict:
    """compress_csa's keywords from the keywords of the two separate calls (compress_c4a's and
    compress_indexer_*'s, by their parameter names): what an engine holding both passes."""
    out = {"token_to_req_indices": main["token_to_req_indices"], "positions": main["positions"]}
    out |= {f"main_{a}": main[a] for a in PART_ARGS} | {f"indexer_{a}": indexer[a] for a in PART_ARGS}
    if main.get("fp8_scale") is not None:
        out["main_fp8_scale"] = main["fp8_scale"]
    return out | options


def _run(args: dict, variant: tuple) -> None:
    if debug_checks():
        return _launch_each(checked_csa(args, variant))
    owned = [
        args[f"{p}_{a}"]
        for p in PART_NAMES
        for a in ("state_cache", "rms_norm_weight", "cos_sin_cache", "k_cache")
    ]
    step = [args[n] for n in _STEP_TENSORS]
    scale = args["main_fp8_scale"]
    # an engine may pass one tensor to both parts (a rope table, a slot mapping): torch's guard
    # refuses a tensor given twice, so it guards each distinct one, the pattern in the key
    guarded, pattern = _distinct(owned), _pattern(owned + step)
    free = len(_distinct(owned + step)) - len(guarded)
    try:
        key = (
            _thread_id(),
            variant,
            *[
                args[f"{p}_{a}"]
                for p in PART_NAMES
                for a in ("block_size", "kv_cache_block_size", "rms_norm_eps")
            ],
            *[t.data_ptr() for t in owned],
            None if scale is None else scale.data_ptr(),
            pattern,
        )
        T = step[2].numel()
        key += (T > FUSED_MAX_T,)
        prepared = _SIGNATURES.entries.get(key)
        hit = (
            prepared is not None
            and prepared.guard(*_distinct(owned + step))
            and step[0].numel() >= T
            and step[5].numel() == T
        )
    except (AttributeError, TypeError):  # not tensors: the checked path names the argument
        key, hit = None, False
    if not hit:
        checked = checked_csa(args, variant)
        if checked is None:
            return None
        prepared, T = _prepare(checked), int(checked[0]["num_rows"])
        if key is not None and _cacheable(args):
            _SIGNATURES.add(key, prepared, _distinct(owned + step), free=free)
    if T:
        prepared.run((*[t.data_ptr() for t in step], T, step[1].numel(), step[4].numel(), step[7].numel()), T)
    return None


def _distinct(tensors: list) -> list:
    """`tensors` without repeats (by identity), first occurrences in order."""
    seen: set[int] = set()
    return [t for t in tensors if not (id(t) in seen or seen.add(id(t)))]


def _pattern(tensors: list) -> tuple[int, ...]:
    """Which earlier argument each one is (its first index): the calls a guard may serve."""
    first: dict[int, int] = {}
    return tuple(first.setdefault(id(t), i) for i, t in enumerate(tensors))


def _cacheable(args: dict) -> bool:
    ints = all(
        type(args[f"{p}_{a}"]) is int for p in PART_NAMES for a in ("block_size", "kv_cache_block_size")
    )
    eps = all(type(args[f"{p}_rms_norm_eps"]) in (int, float) for p in PART_NAMES)
    return ints and eps and all(cacheable_index(args[n]) for n in _STEP_TENSORS)


def _prepare(checked: tuple) -> Prepared:
    values, device, specs = _launches(checked)
    index = device.index if device.index is not None else torch.cuda.current_device()
    kernels = [(kernel_for(spec, device), params, False) for spec, params in specs]
    return Prepared(kernels, values, index, device, step_names=CSA_STEP)


def _launch_each(checked: tuple | None) -> None:
    """The checked path's launches: the fused kernel, or each part with its own values."""
    if checked is None:
        return
    values, device, launches = _launches(checked)
    if len(launches) == 1:
        return _launch_checked(checked)
    for spec, params in launches:
        _launch(spec, device, {p.name: values[b.name] for p, b in zip(abi(spec), params, strict=True)})


def _launches(checked: tuple) -> tuple:
    """(values, device, ((spec, its parameters bound to the fused names), ...)): the fused
    kernel up to FUSED_MAX_T rows, else its two parts, each reading its own part's values."""
    values, device, (spec,) = checked
    if int(values["num_rows"]) <= FUSED_MAX_T:
        return values, device, ((spec, abi(spec)),)
    split = []
    for name, part in zip(PART_NAMES, parts(spec), strict=True):
        bound = tuple(Param(bound_name(name, p.name), p.kind, p.dtype, p.align) for p in abi(part))
        split.append((part, bound))
    return values, device, tuple(split)


def checked_csa(args: dict, variant: tuple) -> tuple | None:
    """(fused ABI values, device, (spec,)) after every check; None when there are no rows."""
    spec = csa_spec(*variant, args)
    values: dict = {}
    for name, part in zip(PART_NAMES, parts(spec), strict=True):
        with _part_names(name):
            part_args = {a: args[f"{name}_{a}"] for a in PART_ARGS}
            part_values = _part_values(part, args, part_args, args.get(f"{name}_fp8_scale"))
        T = int(values.get("num_rows", part_values["num_rows"]))
        if part_values["num_rows"] != T:
            raise ValueError(
                f"{name}_slot_mapping must have T = main_slot_mapping.numel() = {T} entries (the "
                f"same tokens as the main part), got {part_values['num_rows']}"
            )
        values |= {bound_name(name, k): v for k, v in part_values.items()}
    device = check_device({k: v for k, v in args.items() if isinstance(v, torch.Tensor)})
    return None if T == 0 else (values, device, (spec,))


def csa_spec(cache_format: str, indexer: str, rotate: bool, args: dict):
    """The fused variant; ValueError/TypeError naming main_cache_format, indexer_kernel or a weight."""
    if cache_format not in formats_for("c4a"):
        raise ValueError(
            f"main_cache_format must be one of {', '.join(formats_for('c4a'))}, got {cache_format!r}"
        )
    if indexer not in INDEXERS:
        raise ValueError(f"indexer_kernel must be one of {', '.join(INDEXERS)}, got {indexer!r}")
    with _part_names("main"):
        weight = _weight_name(args["main_rms_norm_weight"])
    with _part_names("indexer"):
        other = _weight_name(args["indexer_rms_norm_weight"])
    if other != weight:
        raise TypeError(
            f"indexer_rms_norm_weight must have the dtype of main_rms_norm_weight ({weight}: one "
            f"variant serves both parts), got {other}"
        )
    try:
        return make_spec(
            "csa", 512, 64, weight_dtype=weight, cache_format=cache_format, indexer=indexer, rotate=rotate
        )
    except SpecError as err:
        raise ValueError(str(err)) from None


def _part_values(part, args: dict, a: dict, scale) -> dict:
    values = row_values(
        args["token_to_req_indices"], args["positions"], a["slot_mapping"], a["kv_slot_mapping"]
    )
    values |= state_values(part, a["state_cache"], a["block_table"], a["block_size"])
    values |= store_values(
        part,
        a["rms_norm_weight"],
        a["rms_norm_eps"],
        a["cos_sin_cache"],
        a["k_cache"],
        a["kv_cache_block_size"],
        scale,
    )
    nonempty(int(values["num_rows"]), {k: v for k, v in a.items() if isinstance(v, torch.Tensor)})
    from compressc.runtime import ops

    if ops.check_bounds_enabled():  # csa has no checked build: its parts are checked on the host
        from compressc.runtime.bounds import check_bounds

        shared = {n: args[n] for n in ("token_to_req_indices", "positions")}
        check_bounds(part, a | shared, int(values["num_rows"]))
    return values


@contextmanager
def _part_names(part: str):
    """Errors of the single-op checks, with each part argument named as compress_csa names it."""
    try:
        yield
    except (TypeError, ValueError) as err:
        raise type(err)(_NAMES.sub(lambda m: f"{part}_{m[1]}", str(err))) from None
