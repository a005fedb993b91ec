"""Table, JSON and plot for benchmarks/bench.py results."""

from __future__ import annotations

import json
import subprocess
from datetime import date
from pathlib import Path

import torch


def _speedup(rows: list[dict], row: dict, impl: str) -> str:
    other = [r for r in rows if r["impl"] == impl and r["kernel"] == row["kernel"]
             and r["scenario"] == row["scenario"] and r["T"] == row["T"]]
    return f"{other[0]['us'] / row['us']:.2f}x" if other else "-"


def print_table(rows: list[dict]) -> None:
    """One line per (case, impl); compressc rows carry its speed-ups over an earlier build of the
    same kernels, derived, baseline, torch and the same-size copy (below 1.0x: slower than
    copying its bytes)."""
    head = (f"{'kernel':<18}{'scenario':<9}{'T':>6}{'impl':>11}{'us':>10}{'graph us':>10}{'MB':>9}"
            f"{'GB/s':>8}{'% copy':>8}{'vs before':>10}{'vs deriv':>9}{'vs base':>9}{'vs torch':>9}"
            f"{'vs copy':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        others = ("before", "derived", "baseline", "torch", "copy")
        extra = [_speedup(rows, r, o) if r["impl"] == "compressc" else "" for o in others]
        print(f"{r['kernel']:<18}{r['scenario']:<9}{r['T']:>6}{r['impl']:>11}{r['us']:>10.2f}"
              f"{r['graph_us']:>10.2f}{r['bytes'] / 1e6:>9.2f}{r['gbps']:>8.0f}{r['pct_of_copy']:>8.1f}"
              + f"{extra[0]:>10}" + "".join(f"{e:>9}" for e in extra[1:]))


def _driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except OSError:
        return "unknown"


def write_results(out: Path, rows: list[dict], copy: float, empty: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"gpu": torch.cuda.get_device_name(), "driver": _driver(), "date": date.today().isoformat(),
           "copy_gbps": round(copy, 1), "empty_launch_us": round(empty, 2), "rows": rows}
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    try:
        _plot(out / "latency.png", doc)
    except ImportError:
        print("matplotlib missing: no plot")


def _plot(path: Path, doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["kernel"], r["scenario"]) for r in doc["rows"]})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False)
    for ax, (kernel, scenario) in zip(axes[0], groups, strict=False):
        for impl in ("compressc", "derived", "baseline", "torch", "copy"):
            pts = sorted((r["T"], r["us"]) for r in doc["rows"]
                         if r["kernel"] == kernel and r["scenario"] == scenario and r["impl"] == impl)
            if pts:
                ax.loglog(*zip(*pts, strict=True), marker="o", label=impl)
        ax.set_title(f"{kernel} {scenario}")
        ax.set_xlabel("launched rows T")
        ax.set_ylabel("us (event-timed median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{doc['gpu']}, driver {doc['driver']}, {doc['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
