"""``report.md`` and its plots: accuracy against diversity and coverage over each knob, exposure by popularity
decile, the knobs' latency cost, and the feedback-loop simulator's curves, for a person to read at a glance.

Inputs are the JSON the other tools write (``metrics.json``, :func:`twotower.responsible.sweep.knob_sweep`,
:func:`twotower.responsible.cost.knob_costs`, ``simulation.json``); nothing is measured here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROW_KEYS = ("recall@10", "ndcg@10", "diversity@10", "miscalibration@10", "coverage@10", "novelty@10")
EXPOSURE = "exposure_by_popularity_decile@10"


def plot_sweep(sweep: dict[str, Any], model: dict[str, Any], path: Path) -> None:
    """Recall@10 against genre diversity@10 and against coverage@10, one line per knob, its values marked."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, x_key in zip(axes, ("diversity@10", "coverage@10"), strict=True):
        for knob, points in sweep["knobs"].items():
            xs = [p.get(x_key, float("nan")) for p in points]
            ys = [p["recall@10"] for p in points]
            ax.plot(xs, ys, marker="o", label=knob)
            for p, x, y in zip(points, xs, ys, strict=True):
                ax.annotate(f"{p['value']:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        if x_key in model:
            ax.scatter(
                [model[x_key]], [model["recall@10"]], marker="*", s=160, color="black", label="model alone"
            )
        ax.set_xlabel(x_key)
        ax.set_ylabel(f"recall@10 ({sweep['split']})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Each list knob swept with the others off (served scores: model + session intent)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def exposure_rows(metrics: dict[str, Any]) -> dict[str, list[float]]:
    """Exposure by popularity decile: the training data, the model, the served ranking and each baseline."""
    rows: dict[str, list[float]] = {}
    if "data_exposure_by_popularity_decile" in metrics:
        rows["data (training interactions)"] = metrics["data_exposure_by_popularity_decile"]
    if EXPOSURE in metrics.get("test", {}):
        rows["model"] = metrics["test"][EXPOSURE]
    if EXPOSURE in (metrics.get("served") or {}).get("test", {}):
        rows["served"] = metrics["served"]["test"][EXPOSURE]
    for name, values in metrics.get("baselines", {}).items():
        if EXPOSURE in values:
            rows[name] = values[EXPOSURE]
    return rows


def plot_exposure(rows: dict[str, list[float]], path: Path) -> None:
    """Grouped bars: share of recommendations (data: of interactions) in each popularity decile."""
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(len(rows), 1)
    for j, (name, shares) in enumerate(rows.items()):
        ax.bar([d + j * width for d in range(len(shares))], shares, width=width, label=name)
    ax.set_xticks([d + 0.4 - width / 2 for d in range(10)], [f"{d + 1}" for d in range(10)])
    ax.set_xlabel(
        "popularity decile of the catalog (1 = least popular tenth of the items, 10 = most popular)"
    )
    ax.set_ylabel("share of top-10 slots")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in rows
    ]


def markdown(
    metrics: dict[str, Any],
    sweep: dict[str, Any] | None,
    costs: dict[str, Any] | None,
    simulation: dict[str, Any] | None,
    run_dir: str,
) -> str:
    """The report's text: the figures of each input, with the plots beside them."""
    d = metrics["dataset"]
    lines = [f"# Responsible-personalization report: {d['name']}", "",
             f"Run `{run_dir}`: {d['users']} users, {d['items']} items, {d['interactions']} interactions. "
             f"Protocol: {metrics['protocol']}.", "", "## Model, served ranking and baselines (test)", ""]  # fmt: skip
    rows = [["model", *[metrics["test"].get(k, "") for k in ROW_KEYS]]]
    served = metrics.get("served") or {}
    if "test" in served:
        rows.append(["served", *[served["test"].get(k, "") for k in ROW_KEYS]])
    rows += [[name, *[v.get(k, "") for k in ROW_KEYS]] for name, v in metrics.get("baselines", {}).items()]
    lines += _table(["", *ROW_KEYS], rows)
    if served:
        lines += ["", f"Served settings: `{served.get('rerank')}`."]
    picked = served.get("picked_on_validation")
    if picked:
        knobs, keys = list(picked["grid"]), ("recall@10", "ndcg@10", "diversity@10", "miscalibration@10")
        model_val = ", ".join(f"{k} {v:.4f}" for k, v in picked["model_val"].items())
        lines += ["", f"The served {', '.join(knobs)} were picked on validation: {picked['rule']}. Chosen: "
                  f"**{picked['chosen']}** ({picked['outcome']}; the model on validation: {model_val}).", ""]  # fmt: skip
        lines += _table(
            [*knobs, *keys], [[t[n] for n in knobs] + [t.get(k, "") for k in keys] for t in picked["val"]]
        )
    if sweep is not None:
        lines += ["", f"## Knob sweep ({sweep['split']})", "", "![sweep](sweep.png)", "",
                  "Each knob with the others off; the served scores (model + session intent) as the service has "
                  "them.", ""]  # fmt: skip
        keys = ("recall@10", "ndcg@10", "diversity@10", "coverage@10", "miscalibration@10", "novelty@10")
        for knob, points in sweep["knobs"].items():
            lines += [f"**{knob}**", ""]
            lines += _table([knob, *keys], [[p["value"], *[p.get(k, "") for k in keys]] for p in points]) + [
                ""
            ]
    exposure = exposure_rows(metrics)
    if exposure:
        lines += ["## Exposure by popularity decile (test top-10)", "", "![exposure](exposure.png)", ""]
        lines += _table(["", *[f"d{i + 1}" for i in range(10)]],
                        [[name, *shares] for name, shares in exposure.items()])  # fmt: skip
    if costs is not None:
        lines += ["", f"## Latency cost in-process (k={costs['k']}, {costs['users']} stored users x "
                  f"{costs['rounds']} interleaved rounds, one process)", ""]  # fmt: skip
        lines += _table(["setting", "fields", "p50 ms", "p99 ms", "p50 / baseline"],
                        [[n, v["fields"], v["p50_ms"], v["p99_ms"], v["p50_ratio"]]
                         for n, v in costs["settings"].items()])  # fmt: skip
    if simulation is not None:
        lines += ["", f"## Feedback-loop simulation ({simulation['users']} users, {simulation['rounds']} rounds)",
                  "", f"Oracle: {simulation['oracle']}.", "", "![simulation](simulation.png)", ""]  # fmt: skip
        keys = ("entropy_start", "entropy_end", "entropy_end_vs_start", "long_tail_share", "utility",
                "utility_vs_model")  # fmt: skip
        lines += _table(["policy", *keys], [[name, *[p.get("summary", {}).get(k, "") for k in keys]]
                                            for name, p in simulation["policies"].items()])  # fmt: skip
    return "\n".join(lines) + "\n"
