"""Responsible-personalization report: `twotower-report run_dir=RUN` (see conf/report.yaml).

Writes OUT/report.md with sweep.png (accuracy against diversity and coverage over each knob), exposure.png
(exposure by popularity decile) and, when given a simulation, simulation.png; OUT/report.json holds the
figures. The sweep re-reads the run's data and model; the costs are measured on its bundle.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from twotower.cli._hydra import hydra_app
from twotower.responsible.report import exposure_rows, markdown, plot_exposure, plot_sweep

log = logging.getLogger(__name__)


@hydra_app("report")
def main(cfg: DictConfig) -> None:
    run = Path(cfg.run_dir)
    if not (run / "metrics.json").exists():
        raise FileNotFoundError(f"{run / 'metrics.json'}: not found (is {run} a training run directory?)")
    out = Path(cfg.out) if cfg.out else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    metrics = json.loads((run / "metrics.json").read_text())
    sweep = costs = simulation = None
    if cfg.sweep:
        from twotower.responsible.sweep import knob_sweep, load_run  # torch: only when sweeping

        sweep = knob_sweep(load_run(run), OmegaConf.to_container(cfg.sweep), split=cfg.split)
        plot_sweep(sweep, metrics[cfg.split] if cfg.split in metrics else metrics["test"], out / "sweep.png")
    bundle = Path(cfg.bundle) if cfg.bundle else run / "bundle"
    if cfg.cost.users and (bundle / "manifest.json").exists():
        from serving.recommender import Recommender
        from twotower.responsible.cost import knob_costs

        rec = Recommender.load(bundle)
        users = [u for u, h in rec.histories.items() if len(h.rows)][: cfg.cost.users]
        costs = knob_costs(rec, users, rounds=cfg.cost.rounds)
    simulation_path = Path(cfg.simulation) if cfg.simulation else run / "simulation" / "simulation.json"
    if simulation_path.exists():
        from twotower.responsible.plot import plot_simulation

        simulation = json.loads(simulation_path.read_text())
        plot_simulation(simulation, out / "simulation.png")
    exposure = exposure_rows(metrics)
    if exposure:
        plot_exposure(exposure, out / "exposure.png")
    (out / "report.md").write_text(markdown(metrics, sweep, costs, simulation, str(run)))
    (out / "report.json").write_text(json.dumps({"sweep": sweep, "costs": costs, "exposure": exposure,
                                                 "simulation": str(simulation_path) if simulation else None}, indent=2))  # fmt: skip
    log.info("wrote %s", out / "report.md")
    print(out / "report.md")


if __name__ == "__main__":
    main()
