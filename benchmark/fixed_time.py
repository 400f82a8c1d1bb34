"""The traffic baseline: SUMO's fixed-time programme (the signal plans in the net files).

    python benchmark/fixed_time.py --env-ids tsc-2x2 tsc-4x4 --episodes 3

Runs `episodes` default-length episodes of each traffic id with `fixed_ts=True` (the lights
follow their programme and ignore the actions) and, for comparison, with uniformly random
phases, and prints a markdown table: mean episodic return and the network's mean waiting time
(`waiting_time`, s) and speed. A learned controller is logged under the same names
(charts/episodic_return, charts/waiting_time) by every algorithm file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmark.random_policy import random_episodes  # noqa: E402


@dataclass
class Args:
    env_ids: list[str] = field(default_factory=lambda: ["tsc-2x2", "tsc-4x4"])
    """traffic env ids"""
    episodes: int = 3
    """episodes (seeds seed..seed+episodes-1) per controller"""
    seed: int = 0
    """first seed"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    print("| env | controller | episodic return | waiting time (s) | mean speed (m/s) |")
    print("|---|---|---|---|---|")
    for env_id in args.env_ids:
        for name, fixed in [("fixed-time (SUMO)", True), ("random phases", False)]:
            # one episode per env, seeds seed..seed+episodes-1; the fixed-time lights ignore the actions
            episodes = random_episodes(env_id, args.episodes, args.seed, num_envs=args.episodes, fixed_ts=fixed)
            m = {k: v.mean() for k, v in episodes.items()}
            row = f"| {env_id} | {name} | {m['return']:.1f} | {m['waiting_time']:.1f} | {m['mean_speed']:.2f} |"
            print(row, flush=True)
