"""The floor of every learning curve: the return of uniformly random actions on any env id.

    python benchmark/random_policy.py --env-ids mpe-spread smax-3m --episodes 100
    python benchmark/random_policy.py --env-ids mpe-spread --episodes 200 --env-options backend=mpe2

Plays `episodes` episodes with a uniformly random valid action per agent and step (an available
action where the actions are discrete, a uniform sample within the bounds where continuous) and
prints a markdown table: the mean ± std of the episodic return and, where the env reports it, the
win rate.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402
from envs import random_actions  # noqa: E402


def random_episodes(env_id: str, episodes: int, seed: int, num_envs: int = 8, **make_kwargs) -> dict[str, np.ndarray]:
    """Every per-episode metric of info["episode"] (return, length and the task's own, e.g. win or
    waiting_time) over the first `episodes` episodes that end under uniformly random actions."""
    rng = np.random.default_rng(seed)
    metrics: dict[str, list[float]] = defaultdict(list)
    with envs.make(env_id, num_envs=min(num_envs, episodes), seed=seed, **make_kwargs) as env:
        batch = env.reset()
        while len(metrics["return"]) < episodes:
            batch, _, terminated, truncated, info = env.step(random_actions(env, batch, rng))
            for e in np.flatnonzero(terminated | truncated):
                for name, values in info["episode"].items():
                    metrics[name].append(float(values[e]))
    return {name: np.array(values[:episodes]) for name, values in metrics.items()}


@dataclass
class Args:
    env_ids: list[str] = field(default_factory=lambda: ["mpe-spread"])
    """env ids"""
    episodes: int = 100
    """episodes per env id"""
    seed: int = 0
    """seed of the envs and of the random actions"""
    num_envs: int = 8
    """envs stepped together"""
    env_options: list[str] = field(default_factory=list)
    """options of envs.make as KEY=VALUE pairs (e.g. backend=mpe2)"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    print("| env | random policy: episodic return (mean ± std) | win rate | episodes |")
    print("|---|---|---|---|")
    options = envs.parse_options(args.env_options)
    for env_id in args.env_ids:
        metrics = random_episodes(env_id, args.episodes, args.seed, args.num_envs, **options)
        returns = metrics["return"]
        win = f"{100 * metrics['win'].mean():.1f}%" if "win" in metrics else "—"
        print(f"| {env_id} | {returns.mean():.2f} ± {returns.std():.2f} | {win} | {len(returns)} |", flush=True)
