"""Raw environment throughput: random actions through `envs.make`, env steps per second
summed over the batch. This is the ceiling that training throughput is measured against.

    python benchmark/env_sps.py --env-ids ant-2x4 mpe-spread --num-envs 1 8 --steps 2000
    python benchmark/env_sps.py --env-ids mpe-spread --num-envs 8 128 --backends jax mpe2

prints one line per (env id, backend, batch size): env id, backend, num_envs, env-steps/s (median
of --repeats). --backends measures each listed backend of the family (envs.BACKENDS) in the same
run, the repeats of the backends interleaved so that a drifting machine load hits them alike;
without it, the family's default backend. --env-options KEY=VALUE ... go to envs.make.
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
    return statistics.median(measure_interleaved(env_id, num_envs, steps, repeats, [options], seed)[0])


def measure_interleaved(
    env_id: str, num_envs: int, steps: int, repeats: int, options: list[dict], seed: int = 0
) -> list[list[float]]:
    """Env steps per second of one env per entry of `options` (e.g. one per backend), each
    measured `repeats` times, the repeats taken in turn (A B A B ...); the rates per entry."""
    rngs = [np.random.default_rng(seed) for _ in options]
    made = [envs.make(env_id, num_envs=num_envs, seed=seed, **o) for o in options]
    try:
        batches = [env.reset() for env in made]
        for k, (env, rng) in enumerate(zip(made, rngs)):
            for _ in range(min(20, steps)):  # warm-up (jit compilation, worker start)
                batches[k] = env.step(random_actions(env, batches[k], rng))[0]
        rates: list[list[float]] = [[] for _ in options]
        for _ in range(repeats):
            for k, (env, rng) in enumerate(zip(made, rngs)):
                batch = batches[k]
                start = time.perf_counter()
                for _ in range(steps):
                    batch = env.step(random_actions(env, batch, rng))[0]
                rates[k].append(steps * num_envs / (time.perf_counter() - start))
                batches[k] = batch
    finally:
        for env in made:
            env.close()
    return rates


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
    backends: list[str] = field(default_factory=list)
    """backends to measure side by side (see envs.BACKENDS); default: the family's default only"""
    env_options: list[str] = field(default_factory=list)
    """options of envs.make as KEY=VALUE pairs (e.g. max_cycles=50)"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    extra = envs.parse_options(args.env_options)
    print(f"{'env_id':<28}{'backend':>20}{'num_envs':>9}{'env-steps/s':>14}")
    for env_id in args.env_ids:
        backends = args.backends or [envs.BACKENDS[envs.family(env_id)][0]]
        options = [{**extra, "backend": b} if args.backends else extra for b in backends]
        for n in args.num_envs:
            rates = measure_interleaved(env_id, n, args.steps, args.repeats, options)
            for backend, r in zip(backends, rates):
                print(f"{env_id:<28}{backend:>20}{n:>9}{statistics.median(r):>14,.0f}", flush=True)
