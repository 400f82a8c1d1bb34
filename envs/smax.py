"""SMAC-like battles: JaxMARL's SMAX (`smax-<map>`), batched with `jax.vmap` and `jax.jit` on CPU.

The learners control the allied units; the enemy team plays JaxMARL's built-in heuristic
(`HeuristicEnemySMAX`, as in JaxMARL's SMAX benchmarks). Per step (for the whole batch, in
one jitted call): every env steps, the envs whose battle ended are reset in place
(`jnp.where` on the state tree), and the key in the env object is split.

- obs: each ally's SMAX "unit_list" observation (other units' features, then its own).
- state: JaxMARL's world state (`SMAX.get_world_state`, as JaxMARL's MAPPO uses it), the
  features of every unit (health fraction, position, weapon cooldown, unit-type one-hot; zeros
  for dead units), then every unit's team and type: 12 * (allies + enemies) numbers. Position
  and cooldown are scaled as in the observations (position / map size, cooldown / the unit
  type's cooldown, so every feature is in [0, 1] like SMAC's normalised state); JaxMARL's raw
  ones (positions up to the map size of 32, cooldowns up to 7) swamp the health fractions
  after the critics' input LayerNorm. Runs before 2026-12-06 used the raw values.
- actions: 0-3 move (SMAX's four diagonal directions), 4 stop (the only action of a dead
  unit, SMAC's "no-op"), 5 + j attack enemy j (available while j is alive and in range).
- reward: the team reward of the allies: the enemies' health lost this step / enemy count,
  plus 1 when the battle is won (`won_battle_bonus`).
- terminated: one side eliminated. truncated: the step limit reached with both sides alive.
  SMAX's limit is `max_steps` (default 100 on every map, unlike SMAC's per-map limits), but
  it tests the step counter before incrementing it, so a timed-out battle lasts max_steps + 1
  = 101 steps (`episode_limit`). SMAX marks both endings as `done`; they are told apart here
  by who is still alive.
- info["episode"]["win"]: 1.0 when every enemy died while an ally lived (SMAX can end in a
  draw when the last units kill each other in the same step; a draw is not a win).

Options of `make` go to `HeuristicEnemySMAX` / `SMAX` (e.g. `max_steps=200`,
`attack_mode="random"`, `see_enemy_actions=False`, `observation_type="conic"`).
Compiled functions are cached per (map, options) in the process; reset / step, the numpy
arrays, the persistent compilation cache and the jax settings are `envs.jaxvec`'s.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.jaxvec import Compiled, JaxVecEnv, batched_reset_step, import_jax, strong

_CACHE: dict[tuple, Any] = {}  # (map, options) -> _Compiled


class _Compiled(Compiled):
    """One SMAX scenario and its jitted, vmapped reset / step (shared by every env of a map)."""

    def __init__(self, env_id: str, map_name: str, options: dict):
        jax, smax = import_jax(env_id, "jaxmarl.environments.smax")
        import jax.numpy as jnp

        self.jax = jax
        self.cpu = jax.devices("cpu")[0]
        env = smax.HeuristicEnemySMAX(scenario=smax.map_name_to_scenario(map_name), **options)
        self.env = env
        allies, n_allies = env.agents, env.num_allies

        def world_state(state):
            """`SMAX.get_world_state` with every unit's features scaled as in the observations'
            own-unit features (`SMAX._get_own_features`): position / map size, cooldown / its maximum."""
            s = state.state
            units = jax.vmap(env._get_own_features, in_axes=(None, 0))(s, jnp.arange(s.unit_alive.shape[0]))
            return jnp.concatenate([units.reshape(-1), s.unit_teams, s.unit_types]).astype(jnp.float32)

        def views(obs, state):
            """Contract arrays of one env: obs [N, obs_dim], state [S], avail [N, A], alive [N]."""
            avail = env.get_avail_actions(state)
            return (
                jnp.stack([obs[a] for a in allies]).astype(jnp.float32),
                world_state(state),
                jnp.stack([avail[a] for a in allies]).astype(bool),
                state.state.unit_alive[:n_allies],
            )

        def reset_one(key):
            obs, state = env.reset(key)
            state = strong(jax, state)
            return state, views(obs, state)

        def step_one(key, state, actions):
            obs, state, rewards, _, _ = env.step_env(key, state, {a: actions[i] for i, a in enumerate(allies)})
            alive = state.state.unit_alive
            allies_dead = ~alive[:n_allies].any()
            enemies_dead = ~alive[n_allies:].any()
            terminated = allies_dead | enemies_dead
            truncated = state.state.done & ~terminated  # SMAX's done = terminated | step >= max_steps
            win = (enemies_dead & ~allies_dead).astype(jnp.float32)
            reward = rewards[allies[0]].astype(jnp.float32)  # every ally gets the team reward
            agent_rewards = jnp.full(n_allies, reward)
            return state, views(obs, state), (reward, agent_rewards, terminated, truncated, win)

        self.reset, self.step = batched_reset_step(jax, reset_one, step_one)
        self.warm: set[int] = set()  # batch sizes already compiled

    def idle_actions(self, num_envs: int) -> np.ndarray:
        return np.full((num_envs, self.env.num_allies), self.env.num_movement_actions - 1, np.int32)  # stop


def _compiled(env_id: str, map_name: str, options: dict) -> _Compiled:
    key = (map_name, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _CACHE:
        _CACHE[key] = _Compiled(env_id, map_name, options)
    return _CACHE[key]


class SMAXVecEnv(JaxVecEnv):
    """`num_envs` SMAX battles of one map, stepped together in one jitted call."""

    metric_names = ("win",)

    def __init__(self, env_id: str, num_envs: int = 1, seed: int | None = None, **options):
        map_name = env_id[len("smax-") :]
        from envs import SMAX_IDS

        if env_id not in SMAX_IDS:
            raise ValueError(f"unknown SMAX id {env_id!r}. Valid ids: {', '.join(SMAX_IDS)}")
        if options.get("action_type", "discrete") != "discrete":
            raise ValueError(
                f"{env_id}: only discrete SMAX actions are supported (got action_type={options['action_type']!r})"
            )
        self.env_id, self.num_envs = env_id, num_envs
        self.c = _compiled(env_id, map_name, options)
        env = self.c.env
        self.n_agents = env.num_allies
        self.n_enemies = env.num_enemies
        # SMAX ends a battle when the step counter *before* the step is >= max_steps, so a
        # timed-out episode has max_steps + 1 steps
        self.episode_limit = int(env.max_steps) + 1
        self.observation_spaces = [
            gym.spaces.Box(-np.inf, np.inf, (env.obs_size,), np.float32) for _ in range(self.n_agents)
        ]
        self.action_spaces = [gym.spaces.Discrete(env.num_ally_actions) for _ in range(self.n_agents)]
        self.state_dim = int(env.state_size)
        self._init_sizes()
        self._seed = 0 if seed is None else seed
        self.c.warm_up(num_envs)


def make(env_id: str, num_envs: int = 1, seed: int | None = None, **options) -> SMAXVecEnv:
    """A batch of `num_envs` SMAX battles; see the module docstring for the options."""
    return SMAXVecEnv(env_id, num_envs, seed, **options)
