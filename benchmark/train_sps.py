"""Training throughput of an algorithm file next to the raw env throughput, in one run.

    python benchmark/train_sps.py --algo mappo --env-id ant-2x4
    python benchmark/train_sps.py --algo mappo happo mat --env-id mpe-spread --total-timesteps 20000
    python benchmark/train_sps.py --algo mappo --env-id ant-2x4 --cuda   # the same on the GPU
    python benchmark/train_sps.py --algo mappo --env-id smax-3m --rollout plain  # 8 envs on a batched env
    python benchmark/train_sps.py --algo mappo --env-id mpe-spread --env-options backend=mpe2

For each algorithm: the raw random-action env-steps/s of `envs.make(env_id, num_envs)` at the
algorithm's own default `num_envs` (benchmark/env_sps.py; the mean of one measurement before
and one after the training run, against drifting machine load), and a training run of
`total_timesteps` steps; the training figure is the steady-state rate over the second half
of the run: env steps per second of wall time between the `charts/SPS` points the run logged
at about half time and at the end (updates included; start-up, warm-up such as MADDPG's
random steps before learning_starts, and the final evaluation excluded). Runs go to a
temporary directory. Prints one line per algorithm: algo, env id, num_envs, env SPS, train SPS and
their ratio (medians over --repeats measurements), and where the training time goes over the
same second half of the run, measured without touching the algorithm file (`envs.make` is
wrapped so that the training env's `step` is timed):
  env     the time inside the training env's step() (simulation and the arrays it returns);
  act     the time between two env steps of a rollout: the median gap between the end of one
          step() and the start of the next, times the number of steps (policy forward pass,
          sampling, rollout storage);
  update  the rest of the wall time: the learning updates (and logging), which happen between
          rollouts (or, for MADDPG, every `train_freq` steps);
and the env's own speed inside the run (env steps / time inside step()), next to its raw speed.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Literal

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import envs  # noqa: E402
from benchmark.env_sps import measure_env_sps  # noqa: E402
from benchmark.plot import read_scalars  # noqa: E402
from envs import experiment  # noqa: E402

PARTS = ("env", "act", "update")


class StepTimer:
    """Stands in for `envs.make` during a run: every env it makes has its step() timed."""

    def __init__(self, make=envs.make):
        self.make, self.made = make, []

    def __call__(self, *args, **kwargs):
        env = self.make(*args, **kwargs)
        record = {"num_envs": env.num_envs, "starts": [], "ends": []}
        step = env.step

        def timed_step(actions):
            record["starts"].append(time.perf_counter())
            out = step(actions)
            record["ends"].append(time.perf_counter())
            return out

        env.step = timed_step
        self.made.append(record)
        return env

    def breakdown(self, num_envs: int) -> dict:
        """Seconds of env / act / update over the second half of the training env's steps (the env
        of `num_envs` copies that stepped most: not the one-env probe, not the evaluation env)."""
        record = max((r for r in self.made if r["num_envs"] == num_envs), key=lambda r: len(r["starts"]))
        starts, ends = record["starts"], record["ends"]
        h = len(starts) // 2
        if len(starts) - h < 2:
            return {k: float("nan") for k in PARTS}
        wall = ends[-1] - ends[h - 1]
        env = sum(e - s for s, e in zip(starts[h:], ends[h:]))
        gaps = [s - e for s, e in zip(starts[h:], ends[h - 1 : -1])]
        act = statistics.median(gaps) * len(gaps)
        return {"env": env, "act": act, "update": wall - env - act, "env_steps": (len(starts) - h) * num_envs}


def train_sps(
    algo: str,
    env_id: str,
    total_timesteps: int,
    num_envs: int | None,
    env_steps: int,
    cuda: bool = False,
    rollout: str = "auto",
    env_options: tuple[str, ...] = (),
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
        "env_options": tuple(env_options),
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
    options = envs.parse_options(env_options)
    env_before = measure_env_sps(env_id, args.num_envs, env_steps, **options)
    cwd = os.getcwd()
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        envs.make = timer  # the algorithm file calls envs.make(...): its envs get timed steps
        try:
            result = module.train(args)
            points = read_scalars(result["run_dir"], "charts/SPS", with_wall_time=True)
        finally:
            envs.make = timer.make
            os.chdir(cwd)
    env_rate = (env_before + measure_env_sps(env_id, args.num_envs, env_steps, **options)) / 2  # before and after
    train_rate = float("nan")
    if len(points) >= 2:  # (step, cumulative SPS, wall time): the rate between half time and the end
        (step0, _, wall0), (step1, _, wall1) = points[(len(points) - 1) // 2], points[-1]
        train_rate = (step1 - step0) / (wall1 - wall0) if wall1 > wall0 else float("nan")
    parts = timer.breakdown(args.num_envs)
    total = sum(parts[k] for k in PARTS)
    shares = {k: parts[k] / total for k in PARTS}
    in_train = parts["env_steps"] / parts["env"]  # the env's own speed inside the run, next to its raw speed
    return {"algo": algo, "env_id": env_id, "num_envs": args.num_envs, "env_sps": env_rate, "train_sps": train_rate,
            "env_sps_in_train": in_train, **shares}  # fmt: skip


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
    env_options: list[str] = field(default_factory=list)
    """options of the env family as KEY=VALUE pairs (e.g. backend=mpe2), for training and the raw env alike"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    rows = []
    for algo in args.algo:
        measure = (algo, args.env_id, args.total_timesteps, args.num_envs, args.env_steps, args.cuda, args.rollout,
                   args.env_options)  # fmt: skip
        runs = [train_sps(*measure) for _ in range(args.repeats)]
        medians = ("env_sps", "train_sps", "env_sps_in_train", *PARTS)
        rows.append({**runs[0], **{k: statistics.median(r[k] for r in runs) for k in medians}})
        rows[-1]["ratio"] = statistics.median(r["train_sps"] / r["env_sps"] for r in runs)
    print(f"\n{'algo':<10}{'env_id':<22}{'num_envs':>9}{'env SPS':>10}{'train SPS':>11}{'ratio':>7}"
          f"{'env':>6}{'act':>6}{'update':>7}{'env SPS in train':>18}")  # fmt: skip
    for r in rows:
        print(
            f"{r['algo']:<10}{r['env_id']:<22}{r['num_envs']:>9}{r['env_sps']:>10,.0f}{r['train_sps']:>11,.0f}"
            f"{r['ratio']:>7.0%}{r['env']:>6.0%}{r['act']:>6.0%}{r['update']:>7.0%}{r['env_sps_in_train']:>18,.0f}"
        )
    if args.env_options:
        print(f"env options: {' '.join(args.env_options)}")
    print(
        "env / act / update: shares of the training time (second half of the run): inside env.step, between\n"
        "two env steps of a rollout (policy forward, sampling, storage), the rest (updates, logging);\n"
        "env SPS in train: env steps / time inside env.step during the run (env SPS: the same env on its own)"
    )
