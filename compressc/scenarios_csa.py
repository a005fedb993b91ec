"""Launches of the fused CSA kernel (docs/kernels.md §12): one C4A and one indexer scenario of
the same tokens.

Both parts see the same request rows and positions (one `make_scenario` plan, same seed);
the indexer's state pages and compressed-cache pages are relabelled by random permutations,
so its block table and kv slots differ from the main part's, as with separate KV-cache groups
in vLLM: a kernel that read one part's table for the other writes the wrong pages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from compressc.scenarios import SENTINEL, Scenario, make_scenario
from compressc.specs import KernelSpec
from compressc.specs.csa import PART_ARGS, PART_NAMES, parts


@dataclass
class CsaScenario:
    spec: KernelSpec
    main: Scenario
    indexer: Scenario

    @property
    def T(self) -> int:
        return self.main.T

    @property
    def scenarios(self) -> tuple[Scenario, Scenario]:
        return self.main, self.indexer

    def poisoned_caches(self, sentinel: int = SENTINEL) -> tuple[torch.Tensor, torch.Tensor]:
        return self.main.poisoned_cache(sentinel), self.indexer.poisoned_cache(sentinel)

    def run_reference(self, sentinel: int = SENTINEL) -> tuple[torch.Tensor, torch.Tensor]:
        """Both caches as the two separate kernels' reference writes them (uint8 bytes)."""
        return self.main.run_reference(sentinel), self.indexer.run_reference(sentinel)

    def op_kwargs(
        self, main_cache: torch.Tensor | None = None, indexer_cache: torch.Tensor | None = None
    ) -> dict:
        """`compress_csa`'s keywords; the caches (uint8, as poisoned_caches gives) as vLLM types them."""
        out = {"token_to_req_indices": self.main.token_to_req_indices, "positions": self.main.positions}
        caches = (main_cache, indexer_cache)
        for name, s, cache in zip(PART_NAMES, self.scenarios, caches, strict=True):
            values = {a: getattr(s, a) for a in PART_ARGS}
            values["k_cache"] = s.typed(s.k_cache if cache is None else cache)
            out |= {f"{name}_{a}": v for a, v in values.items()}
        out["main_cache_format"] = self.spec.cache_format
        out["main_fp8_scale"] = self.main.fp8_scale
        out["indexer_kernel"] = self.spec.indexer
        out["indexer_rotate"] = self.spec.rotate
        return out


def csa_scenario(
    spec: KernelSpec, kind: str, T: int, *, device: str | torch.device = "cpu", seed: int = 0, **options
) -> CsaScenario:
    """The fused launch of `spec` (a csa spec) with T rows of `kind` (compressc.scenarios)."""
    main_spec, indexer_spec = parts(spec)
    main = make_scenario(main_spec, kind, T, device=device, seed=seed, **options)
    indexer = make_scenario(indexer_spec, kind, T, device=device, seed=seed, **options)
    gen = torch.Generator().manual_seed(seed + 1)
    return CsaScenario(spec, main, _relabel(indexer, gen))


def _relabel(s: Scenario, gen: torch.Generator) -> Scenario:
    """The same launch with its state pages and compressed-cache pages renumbered."""
    dev = s.state_cache.device
    perm = torch.randperm(s.state_cache.shape[0], generator=gen).to(dev)
    state = torch.empty_like(s.state_cache)
    state[perm] = s.state_cache
    table = torch.where(s.block_table >= 0, perm[s.block_table.clamp(min=0).long()].int(), s.block_table)
    kv_perm = torch.randperm(s.k_cache.shape[0], generator=gen).to(dev)
    B, kv = s.kv_cache_block_size, s.kv_slot_mapping
    moved = kv_perm[(kv.clamp(min=0) // B)] * B + kv.clamp(min=0) % B
    return replace(s, state_cache=state, block_table=table, kv_slot_mapping=torch.where(kv >= 0, moved, kv))
