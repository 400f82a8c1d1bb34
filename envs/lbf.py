"""Level-Based Foraging (LBF) through `lbforaging`, or in jax (`backend="jax"`), as in the EPyMARL
benchmark (Papoudakis et al. 2021).

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

Options (`envs.make(id, **options)`, or `--env-options KEY=VALUE` in every algorithm file):
  backend="lbforaging"  the reference (the default): lbforaging 2.0.0's ForagingEnv, one env after
                  the other through gymnasium's vector env (also `vectorization="async"`)
  backend="jax"   the whole batch in one jitted, vmapped reset / step with the auto-reset inside it,
                  built on Jumanji 1.1.2's LBF (`jumanji.environments.routing.lbf`: its state types,
                  its loading and its reward) with lbforaging's rules where Jumanji's differ: the
                  spawn (players first, anywhere; food inside the border, never in the 3x3 around
                  nor two cells in line from another food), movement (an agent may step into a cell that another
                  leaves, two may swap, only agents that claim the same cell stay), the valid actions
                  (other agents do not block a move) and the observation (visible foods in row-major
                  order, visible agents packed after the agent itself, lbforaging's window for agents
                  near the top and left edges). The same arrays, rewards and episode ends as
                  lbforaging (tests/test_env_lbf_jax.py redoes jax steps in lbforaging);
                  docs/backend-lbf-jax.md lists what differs (the spawn's random stream, and one
                  lbforaging quirk of respawning players)
  episode_limit=50  steps before truncation
  action_masks=True  False: all six actions always available, an invalid one acts as NONE

The two backends draw the same start distribution from different random streams, so a seed
gives the same trajectories within a backend, not across them.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import gymnasium as gym
import numpy as np

from envs import BACKENDS as _BACKENDS
from envs import LBF_IDS as IDS  # the EPyMARL paper's tasks, and 8x8-2p-3f of EPyMARL's README
from envs.core import AgentTupleParallelEnv, GymVectorMultiAgentEnv, ParallelEnvAdapter, require
from envs.jaxvec import Compiled, JaxVecEnv, batched_reset_step, check_backend, import_jax, strong

EPISODE_LIMIT = 50
BACKENDS = _BACKENDS["lbf"]  # the first is the default
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


def observation_space(kw: dict) -> gym.spaces.Box:
    """lbforaging's observation space of one agent (`ForagingEnv._get_observation_space`) from its
    arguments, without lbforaging: (row, col, level) per food, then per agent."""
    rows, cols = kw["field_size"]
    max_food_level = 2 * min(kw["players"], 3)  # the sum of the three highest possible agent levels
    low = [-1, -1, 0] * (kw["max_num_food"] + kw["players"])
    high = [cols - 1, rows - 1, max_food_level] * kw["max_num_food"] + [cols - 1, rows - 1, 2] * kw["players"]
    return gym.spaces.Box(np.array(low, np.float32), np.array(high, np.float32), dtype=np.float32)


# ------------------------------------------------------------------------------- jax backend
NONE, LOAD = 0, 5
MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]], np.int32)  # none N S W E load: (drow, dcol)


class _Compiled(Compiled):
    """One LBF task's jitted, vmapped reset / step (shared by every env of a task).

    Jumanji's `State` / `Agent` / `Food`, its `eat_food` (the loading agents next to a food load it
    when their levels sum to at least its level) and its `get_reward` (level x food level / (the
    loading levels' sum x all food levels of the episode)) are used as they are; spawn, movement,
    valid actions and observation are lbforaging's rules, written here in jax."""

    def __init__(self, env_id: str, episode_limit: int, action_masks: bool):
        jax, lbf = import_jax(env_id, "jumanji.environments.routing.lbf.env", "jumanji==1.1.2")
        from jumanji.environments.routing.lbf import types, utils

        jnp = jax.numpy
        self.jax, self.cpu = jax, jax.devices("cpu")[0]
        kw = task_kwargs(env_id, episode_limit)
        S, N, F = kw["field_size"][0], kw["players"], kw["max_num_food"]
        sight, coop = kw["sight"], kw["force_coop"]
        # the spawn below needs a free cell for every food: each food rules out at most 13 cells
        assert (S - 2) ** 2 - N - 13 * (F - 1) > 0, f"{env_id}: too many foods for the grid"
        self.n_agents, self.n_foods, self.space = N, F, observation_space(kw)
        self.action_masks = action_masks
        # Jumanji's env, for its reward only (its generator is never called)
        generator = lbf.RandomGenerator(grid_size=S, num_agents=N, num_food=F, fov=min(sight, S), force_coop=coop)
        reward_env = lbf.LevelBasedForaging(generator, time_limit=episode_limit, normalize_reward=True, penalty=0.0)
        moves = jnp.asarray(MOVES)
        cells = jnp.arange(S * S)
        cell_rc = jnp.stack([cells // S, cells % S], axis=1)

        def spawn(key):
            """lbforaging's `reset`: players on distinct cells anywhere, levels 1-2; then each food in
            turn on a uniformly drawn free cell inside the border with no food in its 3x3
            neighbourhood nor two cells away in its row or column; food level uniform in
            [1, the sum of the three lowest agent levels], or that sum for every food with -coop."""
            k_pos, k_level, k_food, k_food_level, key = jax.random.split(key, 5)
            player_cells = jax.random.choice(k_pos, S * S, (N,), replace=False)
            levels = jax.random.randint(k_level, (N,), 1, 3)
            top = jnp.sort(levels)[:3].sum()
            row, col = cell_rc[:, 0], cell_rc[:, 1]
            free = (row >= 1) & (row <= S - 2) & (col >= 1) & (col <= S - 2)
            free = free & ~jnp.isin(cells, player_cells)

            def place(free, k):
                cell = jax.random.choice(k, S * S, p=free / free.sum())
                dr, dc = jnp.abs(row - cell // S), jnp.abs(col - cell % S)
                near = ((dr <= 1) & (dc <= 1)) | ((dr == 0) & (dc <= 2)) | ((dc == 0) & (dr <= 2))
                return free & ~near, cell

            _, food_cells = jax.lax.scan(place, free, jax.random.split(k_food, F))
            food_levels = top * jnp.ones(F, jnp.int32) if coop else jax.random.randint(k_food_level, (F,), 1, top + 1)
            agents = types.Agent(
                id=jnp.arange(N), position=cell_rc[player_cells], level=levels, loading=jnp.zeros(N, bool)
            )
            foods = types.Food(
                id=jnp.arange(F), position=cell_rc[food_cells], level=food_levels, eaten=jnp.zeros(F, bool)
            )
            return types.State(agents=agents, food_items=foods, step_count=jnp.array(0, jnp.int32), key=key)

        def food_at(state, rc):
            """[..., 2] cells -> whether an uneaten food is there."""
            f = state.food_items
            return ((rc[..., None, :] == f.position).all(-1) & ~f.eaten).any(-1)

        def valid(state):
            """[N, 6] lbforaging's `_is_valid_action`: a move stays on the grid and does not enter a
            food (other agents do not block it); LOAD next to an uneaten food; NONE always."""
            target = state.agents.position[:, None, :] + moves  # [N, 6, 2]
            inside = ((target >= 0) & (target < S)).all(-1)
            blocked = food_at(state, jnp.clip(target, 0, S - 1))
            move_ok = inside & ~blocked
            load_ok = (food_at(state, jnp.clip(target[:, 1:5], 0, S - 1)) & inside[:, 1:5]).any(-1)
            return move_ok.at[:, NONE].set(True).at[:, LOAD].set(load_ok)

        def observe(state):
            """[N, 3 (F + N)] lbforaging's `_make_gym_obs`, in each agent's window coordinates (cell
            minus lo = max(own cell - sight, 0)): the uneaten foods within `sight` cells in each
            axis, in row-major order; then the agent itself and the other agents whose cell lies in
            [lo, lo + 2 sight] in each axis (so up to 2 sight - own cell away near the top and left
            edges), in agent order; (-1, -1, 0) for the slots left."""
            a, f = state.agents, state.food_items

            def rows(keys, positions, levels, visible, lo, count):
                order = jnp.argsort(jnp.where(visible, keys, jnp.iinfo(jnp.int32).max), stable=True)[:count]
                seen = visible[order]
                rc = jnp.where(seen[:, None], positions[order] - lo, -1)
                return jnp.concatenate([rc, jnp.where(seen, levels[order], 0)[:, None]], axis=1)

            def one(i):
                pos = a.position[i]
                lo = jnp.maximum(pos - sight, 0)
                food_seen = ~f.eaten & (jnp.abs(f.position - pos) <= sight).all(-1)
                food_key = f.position[:, 0] * S + f.position[:, 1]
                agent_seen = ((a.position >= lo) & (a.position <= lo + 2 * sight)).all(-1)
                agent_key = jnp.where(a.id == i, -1, a.id)  # itself first
                foods = rows(food_key, f.position, f.level, food_seen, lo, F)
                agents = rows(agent_key, a.position, a.level, agent_seen, lo, N)
                return jnp.concatenate([foods.reshape(-1), agents.reshape(-1)])

            return jax.vmap(one)(jnp.arange(N)).astype(jnp.float32)

        def views(state):
            """Contract arrays of one env: obs [N, obs_dim], state (the observations concatenated),
            avail [N, 6], alive [N]."""
            obs = observe(state)
            avail = valid(state) if action_masks else jnp.ones((N, 6), bool)
            return obs, obs.reshape(-1), avail, jnp.ones(N, bool)

        def reset_one(key):
            state = strong(jax, spawn(key))
            return state, views(state)

        def step_one(key, state, actions):
            """lbforaging's `step`: an invalid action acts as NONE; every agent claims its target cell
            (its own when it stays) and moves there only if no other agent claims the same cell; then
            the loading agents load (Jumanji's eat_food and reward)."""
            a = state.agents
            ok = jnp.take_along_axis(valid(state), actions[:, None], axis=1)[:, 0]
            actions = jnp.where(ok, actions, NONE)
            target = a.position + moves[actions]
            claims = (target[:, None, :] == target[None, :, :]).all(-1).sum(1)
            moved = a.replace(position=jnp.where((claims == 1)[:, None], target, a.position), loading=actions == LOAD)
            foods, eaten_now, levels = jax.vmap(utils.eat_food, (None, 0))(moved, state.food_items)
            agent_rewards = reward_env.get_reward(foods, levels, eaten_now).astype(jnp.float32)
            state = state.replace(agents=moved, food_items=foods, step_count=state.step_count + 1)
            terminated = foods.eaten.all()
            truncated = ~terminated & (state.step_count >= episode_limit)
            return state, views(state), (agent_rewards.sum(), agent_rewards, terminated, truncated)

        self.spawn, self.valid, self.observe = spawn, valid, observe  # for tests
        self.reset, self.step = batched_reset_step(jax, reset_one, step_one)
        self.warm: set[int] = set()  # batch sizes already compiled

    def idle_actions(self, num_envs: int) -> np.ndarray:
        return np.zeros((num_envs, self.n_agents), np.int32)  # NONE


_CACHE: dict[tuple, _Compiled] = {}  # (env id, episode limit, action masks) -> _Compiled


class JaxLBFVecEnv(JaxVecEnv):
    """`num_envs` LBF envs of one task, stepped together in one jitted call."""

    def __init__(self, env_id: str, num_envs: int, seed: int | None, episode_limit: int, action_masks: bool):
        key = (env_id, episode_limit, action_masks)
        if key not in _CACHE:
            _CACHE[key] = _Compiled(env_id, episode_limit, action_masks)
        self.c = c = _CACHE[key]
        self.env_id, self.num_envs, self.episode_limit = env_id, num_envs, episode_limit
        self.n_agents = c.n_agents
        self.observation_spaces = [c.space] * c.n_agents
        self.action_spaces = [gym.spaces.Discrete(6)] * c.n_agents
        self.state_dim = c.n_agents * c.space.shape[0]
        self._init_sizes()
        self._seed = 0 if seed is None else seed
        c.warm_up(num_envs)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------- make
def make(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    backend: str = BACKENDS[0],
    episode_limit: int = EPISODE_LIMIT,
    action_masks: bool = True,
    vectorization: str = "sync",
) -> Any:
    """See the module docstring for the options."""
    task_kwargs(env_id, episode_limit)  # an unknown task fails here, before any env is built
    check_backend(env_id, backend, BACKENDS, vectorization)
    if backend == "jax":
        return JaxLBFVecEnv(env_id, num_envs, seed, episode_limit, action_masks)
    fns = [functools.partial(_make_adapter, env_id, episode_limit, action_masks) for _ in range(num_envs)]
    return GymVectorMultiAgentEnv(env_id, fns, vectorization, seed, episode_limit=episode_limit)
