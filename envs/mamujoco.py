"""Multi-Agent MuJoCo: gymnasium-robotics' `mamujoco_v1` tasks, stepped by one of two backends.

Each agent controls a group of a robot's joints. All agents share the robot's reward. The state is
the full single-agent MuJoCo observation (gymnasium's v5 robots). Episodes are truncated after
1000 steps; a fall (Ant, Walker, Hopper, Humanoid) terminates them.

Options (`envs.make(id, **options)`, or `--env-options KEY=VALUE` in every algorithm file):
  backend="mujoco"              the fast path (`envs.mamujoco_fast`, the default): mujoco stepped
                                directly, every agent's observation one gather over the batch;
                                the same numbers as the reference (tests/test_env_mamujoco.py)
  backend="gymnasium-robotics"  the reference: `mamujoco_v1` through PettingZoo and gymnasium's
                                vector env (also `vectorization="async"`: one process per env)
  agent_obsk=1                  local observations: an agent sees its own joints plus those
                                `agent_obsk` hops away in the body graph (gymnasium-robotics'
                                option; default 1)
  observation="global"          HARL's setting instead (PKU-MARL/HARL, harl/envs/mamujoco, used
                                for every Multi-Agent MuJoCo number of the HATRPO/HAPPO and HARL
                                papers): agent i observes standardise([state, onehot(i)]), the
                                state followed by its one-hot id, minus that vector's own mean,
                                over its own standard deviation; the critics' state is
                                standardise(state). `agent_obsk` is then unused (HARL's configs
                                set agent_obsk=0, which its code ignores). See
                                docs/backend-mamujoco-fast.md for which paper used which setting.

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

import gymnasium as gym
import numpy as np

from envs import BACKENDS as _BACKENDS
from envs.core import GymVectorMultiAgentEnv, MultiAgentVecEnv, ParallelEnvAdapter, require

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


BACKENDS = _BACKENDS["mamujoco"]  # the first is the default
OBSERVATIONS = ("local", "global")


def standardise(x: np.ndarray) -> np.ndarray:
    """Each vector (last axis) minus its own mean, over its own standard deviation, as HARL does."""
    x = np.asarray(x, np.float64)
    return ((x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)).astype(np.float32)


class GlobalObservation(MultiAgentVecEnv):
    """HARL's observation setting over either backend: agent i observes standardise([state, onehot(i)])
    and the critics' state is standardise(state) (harl/envs/mamujoco/__init__.py: get_obs, get_state)."""

    def __init__(self, env: MultiAgentVecEnv):
        self.env = env
        self.env_id, self.num_envs, self.n_agents = env.env_id, env.num_envs, env.n_agents
        self.episode_limit, self.metric_names, self.state_dim = env.episode_limit, env.metric_names, env.state_dim
        self.action_spaces = env.action_spaces
        size = env.state_dim + env.n_agents
        self.observation_spaces = [gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)] * env.n_agents
        self._init_sizes()
        self._ids = np.broadcast_to(np.eye(env.n_agents), (env.num_envs, env.n_agents, env.n_agents))

    def _view(self, batch: dict, prefix: str = "") -> None:
        state = batch[prefix + "state"]
        obs = np.concatenate([np.broadcast_to(state[:, None], (*self._ids.shape[:2], state.shape[1])), self._ids], -1)
        batch[prefix + "obs"], batch[prefix + "state"] = standardise(obs), standardise(state)

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        batch = self.env.reset(seed)
        self._view(batch)
        return batch

    def step(self, actions):
        batch, reward, terminated, truncated, info = self.env.step(actions)
        self._view(batch)
        self._view(info, "final_")
        return batch, reward, terminated, truncated, info

    def render(self):
        return self.env.render()

    def close(self) -> None:
        self.env.close()


def make(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    agent_obsk: int = 1,
    observation: str = "local",
    max_episode_steps: int | None = None,
    backend: str = "mujoco",
    vectorization: str = "sync",
    render_mode: str | None = None,
) -> MultiAgentVecEnv:
    """`agent_obsk`: observation depth in the body graph; `observation`: "local" (agent_obsk's
    neighbourhood) or "global" (HARL's: the standardised state plus the agent's one-hot id, see the
    module docstring); `max_episode_steps`: truncation
    (default EPISODE_LIMIT = 1000, read here so tests may shorten every episode by patching it);
    `backend`: "mujoco" (the fast path, `envs.mamujoco_fast`) or "gymnasium-robotics" (the
    reference); `vectorization`: "sync" or "async" (one process per env; reference backend only);
    `render_mode="rgb_array"` for video (headless: MUJOCO_GL=egl)."""
    require("mujoco", "mujoco", env_id)
    if backend not in BACKENDS:
        raise ValueError(f"{env_id}: backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(agent_obsk, int) or agent_obsk < 0:
        raise ValueError(f"{env_id}: agent_obsk must be an int >= 0 (graph hops an agent sees), got {agent_obsk!r}")
    if observation not in OBSERVATIONS:
        raise ValueError(f"{env_id}: observation must be one of {OBSERVATIONS}, got {observation!r}")
    if max_episode_steps is None:
        max_episode_steps = EPISODE_LIMIT
    env = _make(env_id, num_envs, seed, agent_obsk, max_episode_steps, backend, vectorization, render_mode)
    return GlobalObservation(env) if observation == "global" else env


def _make(env_id, num_envs, seed, agent_obsk, max_episode_steps, backend, vectorization, render_mode):
    if render_mode is not None:
        os.environ.setdefault("MUJOCO_GL", "egl")
    if backend == "mujoco":
        # the fast path reads gymnasium-robotics' factorization and observation layout once
        require("gymnasium_robotics", "gymnasium-robotics mujoco", env_id)
        if vectorization != "sync":
            raise ValueError(f"{env_id}: vectorization={vectorization!r} needs backend='gymnasium-robotics'; "
                             "the mujoco backend steps every env in this process")  # fmt: skip
        from envs.mamujoco_fast import MujocoMultiAgentEnv

        return MujocoMultiAgentEnv(env_id, num_envs, seed, agent_obsk, max_episode_steps, render_mode)
    make_one = functools.partial(_make_adapter, env_id, agent_obsk, max_episode_steps, render_mode)
    fns = [make_one] * num_envs
    return GymVectorMultiAgentEnv(env_id, fns, vectorization, seed, episode_limit=max_episode_steps)
