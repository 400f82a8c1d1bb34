"""Multi-Agent MuJoCo through gymnasium-robotics' `mamujoco_v1` (PettingZoo parallel API).

Each agent controls a group of a robot's joints and observes its own joints plus those
`agent_obsk` hops away in the body graph (default 1, as in the HATRPO/HAPPO paper). All agents
share the robot's reward. The state is the full single-agent MuJoCo observation. Episodes are
truncated after 1000 steps; a fall (Ant, Walker, Hopper, Humanoid) terminates them.

gymnasium-robotics ships the factorizations 2x4, 4x2, 2x3, 6x1 (HalfCheetah), 3x1 and 9|8;
the ones it lacks are built here from its own body graph:
  ant-8x1:          one agent per joint, hip1, ankle1, ..., hip4, ankle4
  halfcheetah-3x2:  (bthigh, bshin), (bfoot, fthigh), (fshin, ffoot)
  walker-3x2:       (thigh, leg), (foot, thigh_left), (leg_left, foot_left)
  walker-6x1:       thigh, leg, foot, thigh_left, leg_left, foot_left
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings

from envs.core import GymVectorMultiAgentEnv, ParallelEnvAdapter, require

# env id -> (gymnasium-robotics scenario, agent_conf, custom partition by joint label or None)
TASKS = {
    "ant-2x4": ("Ant", "2x4", None),
    "ant-4x2": ("Ant", "4x2", None),
    "ant-8x1": ("Ant", "8x1", [["hip1"], ["ankle1"], ["hip2"], ["ankle2"], ["hip3"], ["ankle3"], ["hip4"], ["ankle4"]]),
    "halfcheetah-2x3": ("HalfCheetah", "2x3", None),
    "halfcheetah-3x2": ("HalfCheetah", "3x2", [["bthigh", "bshin"], ["bfoot", "fthigh"], ["fshin", "ffoot"]]),
    "halfcheetah-6x1": ("HalfCheetah", "6x1", None),
    "walker-2x3": ("Walker2d", "2x3", None),
    "walker-3x2": (
        "Walker2d",
        "3x2",
        [["thigh_joint", "leg_joint"], ["foot_joint", "thigh_left_joint"], ["leg_left_joint", "foot_left_joint"]],
    ),
    "walker-6x1": (
        "Walker2d",
        "6x1",
        [["thigh_joint"], ["leg_joint"], ["foot_joint"], ["thigh_left_joint"], ["leg_left_joint"], ["foot_left_joint"]],
    ),
    "hopper-3x1": ("Hopper", "3x1", None),
    "humanoid-9-8": ("Humanoid", "9|8", None),
}
EPISODE_LIMIT = 1000


def _make_parallel_env(env_id: str, agent_obsk: int, max_episode_steps: int, render_mode: str | None):
    # gymnasium-robotics prints a notice about unrelated (Adroit) envs on import
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        mamujoco_v1 = require("gymnasium_robotics", "gymnasium-robotics mujoco", env_id).mamujoco_v1
    scenario, conf, partition = TASKS[env_id]
    if partition is None:
        return mamujoco_v1.parallel_env(
            scenario, conf, agent_obsk=agent_obsk, render_mode=render_mode, max_episode_steps=max_episode_steps
        )
    from gymnasium_robotics.envs.multiagent_mujoco.obsk import get_parts_and_edges

    parts, edges, globals_ = get_parts_and_edges(scenario, None)  # the whole robot as one part
    nodes = {node.label: node for node in parts[0]}
    factorization = {
        "partition": [tuple(nodes[label] for label in group) for group in partition],
        "edges": edges,
        "globals": globals_,
    }
    return mamujoco_v1.parallel_env(
        scenario,
        conf,
        agent_obsk=agent_obsk,
        agent_factorization=factorization,
        render_mode=render_mode,
        max_episode_steps=max_episode_steps,
    )


def _make_adapter(env_id: str, agent_obsk: int, max_episode_steps: int, render_mode: str | None) -> ParallelEnvAdapter:
    # all agents receive the robot's one reward: the mean of identical rewards is that reward
    make_env = functools.partial(_make_parallel_env, env_id, agent_obsk, max_episode_steps, render_mode)
    return ParallelEnvAdapter(make_env, "mean")


def make(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    agent_obsk: int = 1,
    max_episode_steps: int | None = None,
    vectorization: str = "sync",
    render_mode: str | None = None,
) -> GymVectorMultiAgentEnv:
    """`agent_obsk`: observation depth in the body graph; `max_episode_steps`: truncation
    (default EPISODE_LIMIT = 1000, read here so tests may shorten every episode by patching it);
    `vectorization`: "sync" or "async" (one process per env); `render_mode="rgb_array"` for
    video (headless: MUJOCO_GL=egl)."""
    require("mujoco", "mujoco", env_id)
    if max_episode_steps is None:
        max_episode_steps = EPISODE_LIMIT
    if render_mode is not None:
        os.environ.setdefault("MUJOCO_GL", "egl")
    make_one = functools.partial(_make_adapter, env_id, agent_obsk, max_episode_steps, render_mode)
    fns = [make_one] * num_envs
    return GymVectorMultiAgentEnv(env_id, fns, vectorization, seed, episode_limit=max_episode_steps)
