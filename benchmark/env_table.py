"""The environment table of docs/environments.md: every id with its agents, sizes, episode length, backend.

    python benchmark/env_table.py > /tmp/env_table.md
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402

BACKEND = {
    "toy": "numpy (in-process, batched)",
    "tsc": "SUMO via sumo-rl + libsumo (a process per env)",
    "mamujoco": "mujoco, stepped directly (gymnasium-robotics mamujoco_v1: backend=gymnasium-robotics)",
    "smax": "JaxMARL SMAX (jax.jit + vmap)",
    "mpe": "JaxMARL MPE (jax.jit + vmap); mpe2 with backend=mpe2",
    "lbf": "lbforaging; Jumanji's LBF (jax.jit + vmap) with backend=jax",
    "rware": "rware; Jumanji's RobotWarehouse (jax.jit + vmap) with backend=jax",
    "grf": "gfootball (built from source, optional)",
}


def sizes(values: list[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "/".join(map(str, values))


def row(env_id: str) -> str:
    with envs.make(env_id, num_envs=1, seed=0) as env:
        kind = "discrete" if env.discrete else "continuous"
        return (
            f"| `{env_id}` | {env.n_agents} | {sizes(env.obs_dims)} | {env.state_dim} | "
            f"{kind} {sizes(env.act_dims)} | {env.episode_limit} | {BACKEND[envs.family(env_id)]} |"
        )


if __name__ == "__main__":
    print("| id | agents | obs size per agent | state | actions per agent | episode steps | backend |")
    print("|---|---|---|---|---|---|---|")
    for env_id in envs.ids():
        try:
            print(row(env_id), flush=True)
        except envs.MissingDependencyError:  # an optional backend that is not installed here
            print(f"| `{env_id}` | not installed here | | | | | {BACKEND[envs.family(env_id)]} |", flush=True)
