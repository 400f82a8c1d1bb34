"""Raw environment throughput: random actions through `envs.make`, env steps per second
summed over the batch. This is the ceiling that training throughput is measured against.

    python benchmark/env_sps.py --env-ids ant-2x4 mpe-spread --num-envs 1 8 --steps 2000

prints one line per (env id, batch size): env id, num_envs, env-steps/s (median of --repeats).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402
from envs import random_actions  # noqa: E402


def measure_env_sps(env_id: str, num_envs: int, steps: int, repeats: int = 3, seed: int = 0, **options) -> float:
    """Median over `repeats` of env steps per second (batch steps x num_envs), after a warm-up."""
    rng = np.random.default_rng(seed)
    with envs.make(env_id, num_envs=num_envs, seed=seed, **options) as env:
        batch = env.reset()
        for _ in range(min(20, steps)):  # warm-up (jit compilation, worker start)
            batch = env.step(random_actions(env, batch, rng))[0]
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                batch = env.step(random_actions(env, batch, rng))[0]
            rates.append(steps * num_envs / (time.perf_counter() - start))
    return statistics.median(rates)


@dataclass
class Args:
    env_ids: list[str] = field(default_factory=lambda: ["mpe-spread"])
    """env ids to measure (see envs.ids())"""
    num_envs: list[int] = field(default_factory=lambda: [1, 8])
    """batch sizes to measure"""
    steps: int = 1000
    """batch steps per repeat"""
    repeats: int = 3
    """timed repeats; the median is printed"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    print(f"{'env_id':<28}{'num_envs':>9}{'env-steps/s':>14}")
    for env_id in args.env_ids:
        for n in args.num_envs:
            sps = measure_env_sps(env_id, n, args.steps, args.repeats)
            print(f"{env_id:<28}{n:>9}{sps:>14,.0f}", flush=True)
