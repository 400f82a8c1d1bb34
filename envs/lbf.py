"""Level-Based Foraging (LBF) through `lbforaging` (Papoudakis et al. 2021, the EPyMARL benchmark).

Agents with levels 1-2 walk on a grid and load food; a food is loaded when the agents standing next
to it and choosing LOAD on the same step have levels summing to at least its level. Each loading
agent is rewarded its level x the food's level, normalised so that all the food of an episode is
worth 1 in total over the agents; the team reward is the sum over the agents (EPyMARL's "sum"
scalarisation), so a perfect episode returns 1.0. Per-agent rewards are in info["agent_rewards"].

Ids are `lbf-<task>` with lbforaging's task names (`Foraging-<task>-v3`):
`<S>x<S>-<P>p-<F>f` is an S x S grid with P agents and F foods, `-coop` sets every food's level
to the sum of all agents' levels (they must all load together), a `2s-` prefix limits sight to 2
cells (partial observability). The EPyMARL paper's tasks are all here; lbforaging registers at most
4 foods, so the 5-food tasks are built from the same arguments its registration uses.

Actions: 0 none, 1 north, 2 south, 3 west, 4 east, 5 load. batch["avail"] holds the env's valid
actions (no move into food, a wall or off the grid; load only next to food); EPyMARL instead
offers all six and the env turns invalid ones into "none" (`action_masks=False` does that).
Observation: per food (row, col, level), then per agent (row, col, level), itself first; unseen
ones are (-1, -1, 0). The state is the concatenation of the agents' observations (as EPyMARL).
An episode terminates when all food is loaded, else it is truncated after 50 steps (EPyMARL's
`time_limit=50`).
"""

from __future__ import annotations

import functools
import re

import numpy as np

from envs import LBF_IDS as IDS  # the EPyMARL paper's tasks, and 8x8-2p-3f of EPyMARL's README
from envs.core import AgentTupleParallelEnv, GymVectorMultiAgentEnv, ParallelEnvAdapter, require

EPISODE_LIMIT = 50
TASK_PATTERN = re.compile(r"(?P<partial>2s-)?(?P<size>\d+)x(?P=size)-(?P<players>\d+)p-(?P<foods>\d+)f(?P<coop>-coop)?")


def task_kwargs(env_id: str, episode_limit: int) -> dict:
    """lbforaging's ForagingEnv arguments for an id, as lbforaging registers `Foraging-<task>-v3`."""
    match = TASK_PATTERN.fullmatch(env_id.removeprefix("lbf-"))
    if not env_id.startswith("lbf-") or match is None:
        raise ValueError(f"unknown LBF task {env_id!r}. Valid ids: {', '.join(IDS)}")
    size = int(match["size"])
    return dict(
        players=int(match["players"]),
        min_player_level=1,
        max_player_level=2,
        field_size=(size, size),
        min_food_level=1,
        max_food_level=None,  # the sum of the three lowest agent levels
        max_num_food=int(match["foods"]),
        sight=2 if match["partial"] else size,
        max_episode_steps=episode_limit,
        force_coop=bool(match["coop"]),
        grid_observation=False,
        penalty=0.0,
    )


def all_food_loaded(env) -> bool:
    return env.field.sum() == 0


def valid_actions(env) -> np.ndarray:
    """[N, 6] bool: the actions lbforaging accepts now for each agent."""
    mask = np.zeros((len(env.players), 6), bool)
    for i, player in enumerate(env.players):
        mask[i, [a.value for a in env._valid_actions[player]]] = True
    return mask


def _make_adapter(env_id: str, episode_limit: int, action_masks: bool) -> ParallelEnvAdapter:
    foraging = require("lbforaging.foraging", "lbforaging==2.0.0", env_id)
    env = foraging.ForagingEnv(**task_kwargs(env_id, episode_limit))
    mask_fn = valid_actions if action_masks else None
    return ParallelEnvAdapter(lambda: AgentTupleParallelEnv(env, episode_limit, all_food_loaded, mask_fn), "sum")


def make(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    episode_limit: int = EPISODE_LIMIT,
    action_masks: bool = True,
    vectorization: str = "sync",
) -> GymVectorMultiAgentEnv:
    """`episode_limit`: steps before truncation; `action_masks=False`: all six actions always available."""
    task_kwargs(env_id, episode_limit)  # an unknown task fails here, before any env is built
    fns = [functools.partial(_make_adapter, env_id, episode_limit, action_masks) for _ in range(num_envs)]
    return GymVectorMultiAgentEnv(env_id, fns, vectorization, seed, episode_limit=episode_limit)
