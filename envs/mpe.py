"""Multi-agent particle worlds, stepped by one of two backends.

- `mpe-spread`: 3 agents cover 3 landmarks and avoid collisions (simple_spread_v3).
- `mpe-speaker-listener`: a mute listener is guided to a landmark by a speaker that sees the
  target colour (simple_speaker_listener_v4; heterogeneous: obs 3 and 11, actions 3 and 5).
- `mpe-reference`: 2 agents each guide the other to a landmark (simple_reference_v3).

Episodes last 25 steps (truncated, never terminated). The team reward is the mean of the
agents' rewards (identical rewards in speaker-listener; in spread each agent's reward mixes
the global coverage term with its own collisions, `local_ratio` 0.5); info["agent_rewards"]
holds each agent's. The state is every agent's observation, concatenated (mpe2's `state()`).
The `-continuous` variants take one value in [0, 1] per movement direction, mpe2's layout
[no-op, -x, +x, -y, +y] (force = accel * (a[2] - a[1], a[4] - a[3])), then one per
communication symbol; values outside [0, 1] are clipped (mpe2 clips them too).

Options (`envs.make(id, **options)`, or `--env-options KEY=VALUE` in every algorithm file):
  backend="jax"   JaxMARL's MPE scenarios (`jaxmarl.environments.mpe`), the whole batch in one
                  jitted, vmapped reset / step with the auto-reset inside it (the default: the
                  same observations, state, rewards and action spaces as mpe2, see
                  tests/test_env_mpe.py and docs/backend-mpe-jax.md)
  backend="mpe2"  the reference: mpe2 (PettingZoo parallel API) through gymnasium's vector env
                  (also `vectorization="async"`: one process per env)
  max_cycles=25   episode length
  render_mode="rgb_array"  frames for video; the jax backend draws env 0's jax state with
                  mpe2's renderer (its positions, velocities, messages and goals copied into
                  one mpe2 env)

The two backends draw the same start distribution from different random streams, so a seed
gives the same trajectories within a backend, not across them.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np

from envs import BACKENDS as _BACKENDS
from envs.core import GymVectorMultiAgentEnv, ParallelEnvAdapter, require
from envs.jaxvec import Compiled, JaxVecEnv, batched_reset_step, check_backend, import_jax, strong

SCENARIOS = {
    "mpe-spread": "simple_spread_v3",
    "mpe-speaker-listener": "simple_speaker_listener_v4",
    "mpe-reference": "simple_reference_v3",
}
JAX_SCENARIOS = {
    "mpe-spread": "SimpleSpreadMPE",
    "mpe-speaker-listener": "SimpleSpeakerListenerMPE",
    "mpe-reference": "SimpleReferenceMPE",
}
TASKS = [*SCENARIOS, *(f"{k}-continuous" for k in SCENARIOS)]
EPISODE_LIMIT = 25
BACKENDS = _BACKENDS["mpe"]  # the first is the default
RENDER_FPS = 10  # mpe2's metadata["render_fps"]: one frame per step


# ------------------------------------------------------------------------------ mpe2 backend
def _make_parallel_env(env_id: str, max_cycles: int, render_mode: str | None):
    continuous = env_id.endswith("-continuous")
    module = require(f"mpe2.{SCENARIOS[env_id.removesuffix('-continuous')]}", "mpe2", env_id)
    return module.parallel_env(max_cycles=max_cycles, continuous_actions=continuous, render_mode=render_mode)


def _make_adapter(env_id: str, max_cycles: int, render_mode: str | None) -> ParallelEnvAdapter:
    return ParallelEnvAdapter(functools.partial(_make_parallel_env, env_id, max_cycles, render_mode), "mean")


def set_world(parallel_env, env_id: str, p_pos, p_vel, c, goal) -> None:
    """Put an mpe2 env (reset before) in the state of one jax env: entity positions and velocities
    [agents + landmarks, 2], the agents' messages [agents, dim_c], and the goal landmark(s)
    (speaker-listener: the listener's; reference: agent j's target is goal[j]), goal colours included."""
    world = parallel_env.unwrapped.world
    for k, entity in enumerate(world.entities):
        entity.state.p_pos = np.array(p_pos[k], np.float64)
        entity.state.p_vel = np.array(p_vel[k], np.float64)
    for i, agent in enumerate(world.agents):
        agent.state.c = np.array(c[i], np.float64)
    task = env_id.removesuffix("-continuous")
    if task == "mpe-speaker-listener":
        speaker = world.agents[0]
        speaker.goal_b = world.landmarks[int(goal)]
        speaker.goal_a.color = speaker.goal_b.color + np.array([0.45, 0.45, 0.45])  # as mpe2's reset_world
    elif task == "mpe-reference":
        for i, agent in enumerate(world.agents):  # agent i tells the other, j, where to go: goal[j]
            agent.goal_b = world.landmarks[int(goal[1 - i])]
            agent.goal_a.color = agent.goal_b.color


# ------------------------------------------------------------------------------- jax backend
class _Compiled(Compiled):
    """One JaxMARL MPE scenario and its jitted, vmapped reset / step (shared by every env of a task)."""

    def __init__(self, env_id: str, max_cycles: int):
        jax, mpe = import_jax(env_id, "jaxmarl.environments.mpe")
        import jax.numpy as jnp

        self.jax, self.cpu = jax, jax.devices("cpu")[0]
        continuous = env_id.endswith("-continuous")
        env = getattr(mpe, JAX_SCENARIOS[env_id.removesuffix("-continuous")])(
            action_type="Continuous" if continuous else "Discrete"
        )
        self.env, agents = env, env.agents
        obs_dims = [int(np.prod(env.observation_spaces[a].shape)) for a in agents]
        spaces = [env.action_spaces[a] for a in agents]
        act_dims = [int(np.prod(s.shape)) if continuous else int(s.n) for s in spaces]
        obs_dim, width = max(obs_dims), max(act_dims)
        avail = np.zeros((len(agents), width), bool)  # discrete: an agent's own actions, never padding
        for i, n in enumerate(act_dims):
            avail[i, :n] = True
        self.obs_dims, self.act_dims = obs_dims, act_dims

        def views(obs):
            """Contract arrays of one env: obs [N, obs_dim] (zero padded), state (every agent's
            observation, concatenated, as mpe2's state()), avail [N, A], alive [N]."""
            padded = jnp.stack([jnp.pad(obs[a], (0, obs_dim - d)) for a, d in zip(agents, obs_dims)])
            state = jnp.concatenate([obs[a] for a in agents])
            alive = jnp.ones(len(agents), bool)
            return padded.astype(jnp.float32), state.astype(jnp.float32), jnp.asarray(avail), alive

        def reset_one(key):
            obs, state = env.reset(key)
            state = strong(jax, state)
            return state, views(obs)

        def step_one(key, state, actions):
            if continuous:  # each agent's own entries of the padded row, clipped to [0, 1] as mpe2 does
                acts = {a: jnp.clip(actions[i, :n], 0.0, 1.0) for i, (a, n) in enumerate(zip(agents, act_dims))}
            else:
                acts = {a: actions[i] for i, a in enumerate(agents)}
            # JaxMARL's own `done` comes one step late (it tests the counter before incrementing it: 26
            # steps); the episode ends here after max_cycles steps, as in mpe2
            obs, state, rewards, _, _ = env.step_env(key, state, acts)
            agent_rewards = jnp.stack([rewards[a] for a in agents]).astype(jnp.float32)
            truncated = state.step >= max_cycles
            return state, views(obs), (agent_rewards.mean(), agent_rewards, jnp.zeros((), bool), truncated)

        self.reset, self.step = batched_reset_step(jax, reset_one, step_one)
        self.continuous = continuous
        self.warm: set[int] = set()  # batch sizes already compiled

    def idle_actions(self, num_envs: int) -> np.ndarray:
        n = len(self.act_dims)
        shape = (num_envs, n, max(self.act_dims)) if self.continuous else (num_envs, n)
        return np.zeros(shape, np.float32 if self.continuous else np.int32)


_CACHE: dict[tuple, _Compiled] = {}  # (env id, max_cycles) -> _Compiled


class JaxMPEVecEnv(JaxVecEnv):
    """`num_envs` JaxMARL particle worlds of one task, stepped together in one jitted call."""

    render_fps = RENDER_FPS

    def __init__(self, env_id: str, num_envs: int, seed: int | None, max_cycles: int, render_mode: str | None):
        if (env_id, max_cycles) not in _CACHE:
            _CACHE[env_id, max_cycles] = _Compiled(env_id, max_cycles)
        self.c = c = _CACHE[env_id, max_cycles]
        self.env_id, self.num_envs, self.episode_limit = env_id, num_envs, max_cycles
        self.n_agents = len(c.obs_dims)
        self.observation_spaces = [gym.spaces.Box(-np.inf, np.inf, (d,), np.float32) for d in c.obs_dims]
        if c.continuous:
            self.action_spaces = [gym.spaces.Box(0.0, 1.0, (n,), np.float32) for n in c.act_dims]
        else:
            self.action_spaces = [gym.spaces.Discrete(n) for n in c.act_dims]
        self.state_dim = sum(c.obs_dims)
        self._init_sizes()
        self._seed = 0 if seed is None else seed
        self.render_mode, self._viewer = render_mode, None
        c.warm_up(num_envs)

    def render(self) -> np.ndarray:
        """The frame of env 0: its jax state drawn by an mpe2 env of the same task."""
        if self.render_mode != "rgb_array":
            raise ValueError(f"{self.env_id}: render() needs envs.make(..., render_mode='rgb_array')")
        if self._state is None:
            raise RuntimeError(f"{self.env_id}: call reset() before render()")
        s = self.c.jax.device_get(self.c.jax.tree.map(lambda x: x[0], self._state))
        if self._viewer is None:
            self._viewer = _make_parallel_env(self.env_id, self.episode_limit, "rgb_array")
            self._viewer.reset(seed=0)
        set_world(self._viewer, self.env_id, s.p_pos, s.p_vel, s.c, s.goal)
        raw = self._viewer.unwrapped
        if int(s.step) == 0:  # a new episode: mpe2 fixes its zoom at reset
            raw.original_cam_range = np.max(np.abs(np.asarray(s.p_pos)))
        return raw.render()

    def close(self) -> None:
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None


# ------------------------------------------------------------------------------------- make
def make(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    backend: str = BACKENDS[0],
    max_cycles: int = EPISODE_LIMIT,
    vectorization: str = "sync",
    render_mode: str | None = None,
) -> Any:
    """See the module docstring for the options."""
    check_backend(env_id, backend, BACKENDS, vectorization)
    if backend == "jax":
        return JaxMPEVecEnv(env_id, num_envs, seed, max_cycles, render_mode)
    fns = [functools.partial(_make_adapter, env_id, max_cycles, render_mode) for _ in range(num_envs)]
    return GymVectorMultiAgentEnv(env_id, fns, vectorization, seed, episode_limit=max_cycles)
