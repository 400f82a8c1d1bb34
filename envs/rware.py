"""Multi-Robot Warehouse (RWARE) through `rware` (Papoudakis et al. 2021, the EPyMARL benchmark).

Robots move shelves in a warehouse: a robot drives under a requested shelf, loads it, carries it
to a goal cell at the bottom, and later returns it to a free shelf cell. The robot that delivers
a requested shelf to a goal gets reward 1 (rware's individual reward), and a new shelf is requested;
the team reward is the sum over the robots (EPyMARL's "sum" scalarisation), so an episode's return
counts the deliveries. The reward is sparse: most random episodes deliver nothing.

Ids are `rware-<size>-<N>ag` with rware's names (`rware-<size>-<N>ag-v2`): `tiny` is a warehouse of
11 rows x 10 columns with one row of shelf blocks, `small` 20 x 10 with two; N robots, N requested
shelves at a time, two goal cells. The EPyMARL paper's tasks are tiny-2ag, tiny-4ag and small-4ag.

Actions: 0 no-op, 1 forward, 2 turn left, 3 turn right, 4 load/unload (all always available).
Observation (rware's flattened default, 71 values for sensor range 1): the robot's position,
direction, whether it carries a shelf and whether it is on the highway, then for each of the 3 x 3
cells around it: robot there, its direction, shelf there, shelf requested. The state is the
concatenation of the robots' observations (as EPyMARL). Episodes never terminate: they are
truncated after 500 steps (EPyMARL's `time_limit=500`).
"""

from __future__ import annotations

import functools

from envs import RWARE_IDS as IDS
from envs.core import AgentTupleParallelEnv, GymVectorMultiAgentEnv, ParallelEnvAdapter, require

EPISODE_LIMIT = 500


def never_terminal(env) -> bool:
    return False


def _make_adapter(env_id: str, episode_limit: int) -> ParallelEnvAdapter:
    require("rware", "rware==2.0.0", env_id)  # registers the rware-* gymnasium ids
    import gymnasium as gym

    spec = gym.spec(f"{env_id}-v2")
    warehouse = gym.envs.registration.load_env_creator(spec.entry_point)
    env = warehouse(**{**spec.kwargs, "max_steps": episode_limit})
    return ParallelEnvAdapter(lambda: AgentTupleParallelEnv(env, episode_limit, never_terminal), "sum")


def make(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    episode_limit: int = EPISODE_LIMIT,
    vectorization: str = "sync",
) -> GymVectorMultiAgentEnv:
    """`episode_limit`: steps before truncation."""
    if env_id not in IDS:
        raise ValueError(f"unknown RWARE task {env_id!r}. Valid ids: {', '.join(IDS)}")
    fns = [functools.partial(_make_adapter, env_id, episode_limit) for _ in range(num_envs)]
    return GymVectorMultiAgentEnv(env_id, fns, vectorization, seed, episode_limit=episode_limit)
