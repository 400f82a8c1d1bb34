"""Training throughput of an algorithm file next to the raw env throughput, in one run.

    python benchmark/train_sps.py --algo mappo --env-id ant-2x4
    python benchmark/train_sps.py --algo mappo happo mat --env-id mpe-spread --total-timesteps 20000
    python benchmark/train_sps.py --algo mappo --env-id ant-2x4 --cuda   # the same on the GPU
    python benchmark/train_sps.py --algo mappo --env-id smax-3m --rollout plain  # 8 envs on a batched env

For each algorithm: the raw random-action env-steps/s of `envs.make(env_id, num_envs)` at the
algorithm's own default `num_envs` (benchmark/env_sps.py; the mean of one measurement before
and one after the training run, against drifting machine load), and a training run of
`total_timesteps` steps; the training figure is the steady-state rate over the second half
of the run: env steps per second of wall time between the `charts/SPS` points the run logged
at about half time and at the end (updates included; start-up, warm-up such as MADDPG's
random steps before learning_starts, and the final evaluation excluded). Runs go to a
temporary directory. Prints one line per algorithm: algo, env id, num_envs, env SPS, train SPS and
their ratio (medians over --repeats measurements).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Literal

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmark.env_sps import measure_env_sps  # noqa: E402
from benchmark.plot import read_scalars  # noqa: E402
from envs import experiment  # noqa: E402


def train_sps(
    algo: str,
    env_id: str,
    total_timesteps: int,
    num_envs: int | None,
    env_steps: int,
    cuda: bool = False,
    rollout: str = "auto",
) -> dict:
    module = importlib.import_module(algo)
    names = {f.name for f in dataclasses.fields(module.Args)}
    overrides = {
        "env_id": env_id,
        "total_timesteps": total_timesteps,
        "save_model": False,
        "eval_interval": 0,
        "eval_episodes": 1,
        "cuda": cuda,
    }
    if num_envs is not None:
        overrides["num_envs"] = num_envs
    args = module.Args(**{k: v for k, v in overrides.items() if k in names})
    if hasattr(module, "ROLLOUT_DEFAULTS"):  # the file's own default rollout for this env family
        if rollout != "auto":  # or the other family's, e.g. the plain (8-env) rollout on a batched env
            for name, value in module.ROLLOUT_DEFAULTS[rollout].items():
                if getattr(args, name) is None:
                    setattr(args, name, value)
        experiment.resolve_rollout(args, module.ROLLOUT_DEFAULTS)
    env_before = measure_env_sps(env_id, args.num_envs, env_steps)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            result = module.train(args)
            points = read_scalars(result["run_dir"], "charts/SPS", with_wall_time=True)
        finally:
            os.chdir(cwd)
    env_rate = (env_before + measure_env_sps(env_id, args.num_envs, env_steps)) / 2  # before and after training
    train_rate = float("nan")
    if len(points) >= 2:  # (step, cumulative SPS, wall time): the rate between half time and the end
        (step0, _, wall0), (step1, _, wall1) = points[(len(points) - 1) // 2], points[-1]
        train_rate = (step1 - step0) / (wall1 - wall0) if wall1 > wall0 else float("nan")
    return {"algo": algo, "env_id": env_id, "num_envs": args.num_envs, "env_sps": env_rate, "train_sps": train_rate}


@dataclass
class Args:
    algo: list[str] = field(default_factory=lambda: ["mappo"])
    """algorithm files (without .py) to measure"""
    env_id: str = "ant-2x4"
    """env id to train on"""
    total_timesteps: int = 20_000
    """training steps per measurement"""
    num_envs: int | None = None
    """batch size; default: each algorithm's own default"""
    env_steps: int = 500
    """batch steps of the raw env measurement (per repeat)"""
    repeats: int = 1
    """measurements per algorithm; the medians of env SPS, train SPS and their ratio are printed"""
    cuda: bool = False
    """train on the GPU (the env still steps on the CPU)"""
    rollout: Literal["auto", "plain", "batched"] = "auto"
    """which of each file's ROLLOUT_DEFAULTS: auto (by env family, envs.batched), plain or batched"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    rows = []
    for algo in args.algo:
        measure = (algo, args.env_id, args.total_timesteps, args.num_envs, args.env_steps, args.cuda, args.rollout)
        runs = [train_sps(*measure) for _ in range(args.repeats)]
        rows.append({**runs[0], **{k: statistics.median(r[k] for r in runs) for k in ("env_sps", "train_sps")}})
        rows[-1]["ratio"] = statistics.median(r["train_sps"] / r["env_sps"] for r in runs)
    print(f"\n{'algo':<8}{'env_id':<22}{'num_envs':>9}{'env SPS':>10}{'train SPS':>11}{'ratio':>7}")
    for r in rows:
        print(
            f"{r['algo']:<8}{r['env_id']:<22}{r['num_envs']:>9}{r['env_sps']:>10,.0f}{r['train_sps']:>11,.0f}"
            f"{r['ratio']:>7.0%}"
        )
