"""The simulator's figure: entropy, long-tail share and oracle utility per round, one line per policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_simulation(result: dict[str, Any], path: Path) -> None:
    """Three panels over rounds; the entropy panel marks 0.8 x the users' starting entropy (the issue's floor)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = [("entropy", "consumed-category entropy, bits (recent window)"),
              ("long_tail_share", "long-tail share of consumed items"),
              ("utility", "oracle utility of consumed item")]  # fmt: skip
    for name, figures in result["policies"].items():
        if "entropy" not in figures:
            continue
        for ax, (key, _) in zip(axes, panels, strict=True):
            values = figures[key]
            start = 0 if key == "entropy" else 1  # entropy[0] is the prefixes, before any round
            ax.plot(range(start, start + len(values)), values, marker=".", label=name)
    start = result.get("starting_entropy")
    if start is not None:
        axes[0].axhline(0.8 * start, color="grey", linestyle=":", label="0.8 x start")
    for ax, (_, label) in zip(axes, panels, strict=True):
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"feedback loop: {result['users']} users, {result['rounds']} rounds, oracle {result['oracle']}"[:120],
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
