"""Feedback-loop simulator: `twotower-simulate-feedback bundle=B out=DIR [users=N rounds=R]`
(conf/simulate_feedback.yaml; docs/responsible.md). Writes DIR/simulation.json and DIR/simulation.png."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from serving.recommender import Recommender
from twotower.cli._hydra import hydra_app
from twotower.responsible.plot import plot_simulation
from twotower.responsible.simulation import SimulationConfig, run_simulation


def simulation_config(cfg: DictConfig) -> SimulationConfig:
    """The SimulationConfig fields of a Hydra config."""
    names = {f.name for f in dataclasses.fields(SimulationConfig)}
    return SimulationConfig(**{k: v for k, v in OmegaConf.to_container(cfg).items() if k in names})


@hydra_app("simulate_feedback")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = Recommender.load(cfg.bundle, intent_boost=cfg.intent_boost)
    policies = OmegaConf.to_container(cfg.policies)
    if cfg.only is not None:
        unknown = sorted(set(cfg.only) - set(policies))
        if unknown:
            raise ValueError(f"only={list(cfg.only)}: no policy named {unknown}; known: {sorted(policies)}")
        policies = {name: fields for name, fields in policies.items() if name in cfg.only}
    result = run_simulation(rec, simulation_config(cfg), policies, cfg.trace)
    result["bundle"] = str(cfg.bundle)
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    traces = {name: p.pop("trace") for name, p in result["policies"].items() if "trace" in p}
    if traces:
        (out / "simulation_trace.json").write_text(json.dumps(traces))
    (out / "simulation.json").write_text(json.dumps(result, indent=2))
    plot_simulation(result, out / "simulation.png")
    print(f"{result['users']} users, {result['rounds']} rounds, oracle {result['oracle']}, "
          f"starting entropy {result['starting_entropy']:.3f} bits")  # fmt: skip
    for name, figures in result["policies"].items():
        if "skipped" in figures:
            print(f"{name:<10} skipped: {figures['skipped']}")
            continue
        s = figures["summary"]
        print(f"{name:<10} entropy {s['entropy_start']:.3f} -> {s['entropy_end']:.3f} (se {s['entropy_end_se']:.3f})"
              f"  long tail {s['long_tail_share']:.3f}  utility {s['utility']:.4f}"
              f" (percentile {s['utility_percentile']:.3f})  {figures['seconds']:.1f} s")  # fmt: skip
    for check, passed in result["targets"].items():
        print(f"{'pass' if passed else 'FAIL'}  {check}")
    print(f"wrote {out / 'simulation.json'} and {out / 'simulation.png'} in {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()
