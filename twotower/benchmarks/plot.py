"""The latency-vs-recall figure of the retrieval benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_latency(result: dict[str, Any], path: Path) -> None:
    """p50 (solid) and p99 (dashed) recommend latency against recall@10, one colour per catalog size,
    one marker per index kind; the naive peer as a star at recall 1."""
    fig, ax = plt.subplots(figsize=(8, 5))
    sizes = sorted({r["n_items"] for r in result["results"]})
    markers = {"Flat": "s", "HNSW": "o", "IVF": "^"}
    for colour, n in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], sizes, strict=False):
        rows = [r for r in result["results"] if r["n_items"] == n]
        for family in {r["index"].split(",")[0].rstrip("0123456789") for r in rows}:
            group = sorted((r for r in rows if r["index"].startswith(family)), key=lambda r: r["recall@10"])
            recall = [r["recall@10"] for r in group]
            marker = next((m for name, m in markers.items() if family.startswith(name)), "x")
            ax.plot(recall, [r["recommend"]["p50_ms"] for r in group], marker=marker, color=colour, linestyle="-",
                    label=f"{n:,} items, {family} p50")  # fmt: skip
            ax.plot(recall, [r["recommend"]["p99_ms"] for r in group], marker=marker, color=colour, linestyle="--",
                    alpha=0.5)  # fmt: skip
        naive = next((r["naive"] for r in rows if r["naive"]), None)
        if naive:
            ax.plot([1.0], [naive["p50_ms"]], marker="*", markersize=14, color=colour, linestyle="none",
                    label=f"{n:,} items, naive PyTorch p50")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 vs exact search")
    ax.set_ylabel("recommend() latency, ms (solid p50, dashed p99)")
    ax.set_title(f"one query, {result['machine']['threads']} thread, {result['machine']['cpu']}"[:90])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
