"""Multi-Robot Warehouse (RWARE) through `rware`, or in jax (`backend="jax"`), as in the EPyMARL
benchmark (Papoudakis et al. 2021).

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
truncated after 500 steps (EPyMARL's `time_limit=500`). Per-robot rewards are in info["agent_rewards"].

Options (`envs.make(id, **options)`, or `--env-options KEY=VALUE` in every algorithm file):
  backend="rware"  the reference (the default): rware 2.0.0's Warehouse, one env after the other
                  through gymnasium's vector env (also `vectorization="async"`)
  backend="jax"   the whole batch in one jitted, vmapped reset / step with the auto-reset inside it,
                  built on Jumanji 1.1.2's RobotWarehouse (`jumanji.environments.routing.robot_warehouse`:
                  its state types, layout, spawn, turning and request queue) with rware's rules where
                  Jumanji's differ: rware's collision resolution (robots in a chain move together, a
                  rotating cycle moves, two robots swapping or entering one cell are stopped, never an
                  episode end), no-op never unloads, a loaded robot may follow another loaded robot, the
                  delivering robot's own reward and rware's observation layout. The same arrays, rewards
                  and positions as rware (tests/test_env_rware_jax.py redoes jax steps in rware);
                  docs/backend-rware-jax.md lists what differs (one tie-break of rware's networkx graph)
  episode_limit=500  steps before truncation

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
from envs import RWARE_IDS as IDS
from envs.core import AgentTupleParallelEnv, GymVectorMultiAgentEnv, ParallelEnvAdapter, require
from envs.jaxvec import Compiled, JaxVecEnv, batched_reset_step, check_backend, import_jax, strong

EPISODE_LIMIT = 500
BACKENDS = _BACKENDS["rware"]  # the first is the default
SIZES = {"tiny": (1, 3), "small": (2, 3)}  # rware's (shelf rows, shelf columns); column height 8


def task_kwargs(env_id: str) -> dict:
    """rware's Warehouse layout arguments for an id, as rware registers `rware-<size>-<N>ag-v2`."""
    match = re.fullmatch(r"rware-(?P<size>tiny|small)-(?P<agents>\d+)ag", env_id)
    if env_id not in IDS or match is None:
        raise ValueError(f"unknown RWARE task {env_id!r}. Valid ids: {', '.join(IDS)}")
    rows, columns = SIZES[match["size"]]
    n = int(match["agents"])
    return dict(shelf_rows=rows, shelf_columns=columns, column_height=8, num_agents=n, request_queue_size=n)


def never_terminal(env) -> bool:
    return False


def _make_adapter(env_id: str, episode_limit: int) -> ParallelEnvAdapter:
    require("rware", "rware==2.0.0", env_id)  # registers the rware-* gymnasium ids
    spec = gym.spec(f"{env_id}-v2")
    warehouse = gym.envs.registration.load_env_creator(spec.entry_point)
    env = warehouse(**{**spec.kwargs, "max_steps": episode_limit})
    return ParallelEnvAdapter(lambda: AgentTupleParallelEnv(env, episode_limit, never_terminal), "sum")


# ------------------------------------------------------------------------------- jax backend
NOOP, FORWARD, LEFT, RIGHT, TOGGLE_LOAD = range(5)
# Jumanji's directions (UP, RIGHT, DOWN, LEFT): their (drow, dcol), and rware's index of each (UP, DOWN, LEFT, RIGHT)
STEPS = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], np.int32)
RWARE_DIRECTION = np.array([0, 3, 1, 2], np.int32)
OBS_DIM = 8 + 9 * 7  # own features, then per cell of the 3 x 3 view: robot, its direction (4), shelf, requested


class _Compiled(Compiled):
    """One RWARE task's jitted, vmapped reset / step (shared by every env of a task).

    Jumanji's `State` / `Agent` / `Shelf`, its layout and spawn (`RandomGenerator`), its turning
    (`get_new_direction_after_turn`) and its delivery and request queue
    (`RobotWarehouse._update_reward_and_request_queue`) are used as they are; the movement and its
    collisions, loading, the per-robot reward and the observation are rware's rules, written here in
    jax. Positions are Jumanji's (x = row, y = column); directions Jumanji's numbering."""

    def __init__(self, env_id: str, episode_limit: int):
        jax, rw = import_jax(env_id, "jumanji.environments.routing.robot_warehouse", "jumanji==1.1.2")
        from jumanji.environments.routing.robot_warehouse.constants import _AGENTS, _SHELVES
        from jumanji.environments.routing.robot_warehouse.types import Position
        from jumanji.environments.routing.robot_warehouse.utils_agent import get_new_direction_after_turn

        jnp = jax.numpy
        self.jax, self.cpu = jax, jax.devices("cpu")[0]
        kw = task_kwargs(env_id)
        generator = rw.generator.RandomGenerator(sensor_range=1, **kw)
        jumanji_env = rw.RobotWarehouse(generator, time_limit=episode_limit)  # for its request queue only
        N, (R, C) = kw["num_agents"], generator.grid_size
        n_shelves = int(generator.shelf_ids.shape[0])
        self.n_agents, self.grid_size = N, (R, C)
        highways = jnp.asarray(generator.highways, jnp.int32)
        steps, to_rware, eye = jnp.asarray(STEPS), jnp.asarray(RWARE_DIRECTION), jnp.eye(4, dtype=jnp.float32)
        idx = jnp.arange(N)

        def regrid(agents, shelves):
            """rware's `_recalc_grid` in Jumanji's channels: shelf id + 1 and robot id + 1 per cell."""
            grid = jnp.zeros((2, R, C), jnp.int32)
            grid = grid.at[_SHELVES, shelves.position.x, shelves.position.y].set(jnp.arange(n_shelves) + 1)
            return grid.at[_AGENTS, agents.position.x, agents.position.y].set(idx + 1)

        def commits(pos, target, moving):
            """[N] bool, rware's conflict resolution: each robot adds the edge own cell -> target cell
            (a self-loop when it stays) to a graph; in a weakly connected component with a cycle only the
            robots on the cycle move, and none when the cycle is two robots swapping; in one without, the
            robots on its longest path into the free cell move (networkx's `dag_longest_path`: at a tie,
            the predecessor whose cell entered the graph first, edges added in robot order)."""
            into = (target[:, None, :] == pos[None, :, :]).all(-1) & moving[:, None]  # [i, j]: i moves into j's cell
            nxt = jnp.where(moving, jnp.where(into.any(1), jnp.argmax(into, 1), -1), idx)  # -1: into a free cell
            follow = lambda p: jnp.where(p >= 0, nxt[jnp.maximum(p, 0)], -1)  # noqa: E731
            p, cycle = nxt, jnp.where(nxt == idx, 1, 0)  # cycle: length of the cycle through the robot, 0 if none
            for k in range(2, N + 1):
                p = follow(p)
                cycle = jnp.where((cycle == 0) & (p == idx), k, cycle)
            in_tree = p == -1  # the robot's chain (of at most N robots) ends in a free cell
            last = idx
            for _ in range(N - 1):
                last = jnp.where(nxt[last] >= 0, nxt[last], last)
            root = target[last, 0] * C + target[last, 1]  # the free cell of its chain
            depth = jnp.zeros(N, jnp.int32)  # longest chain of robots behind each robot
            for _ in range(N):
                depth = jnp.max(jnp.where(into.T & in_tree[None, :], depth[None, :] + 1, 0), 1)
            # order of the robot's cell in the graph: its own edge, or an earlier robot's target
            order = jnp.min(jnp.where(into.T & (idx[None, :] < idx[:, None]), 2 * idx[None, :] + 1, 2 * N), 1)
            order = jnp.minimum(order, 2 * idx)
            # rivals: other robots of the same tree entering the same cell (the same robot's, or the same free one)
            same = jnp.where((nxt >= 0)[:, None], nxt[:, None] == nxt[None, :], root[:, None] == root[None, :])
            rivals = same & ((nxt[:, None] >= 0) == (nxt[None, :] >= 0))
            rivals &= in_tree[:, None] & in_tree[None, :] & (idx[:, None] != idx[None, :])
            score = depth * (2 * N + 1) - order  # the longer chain behind, then the earlier cell
            beaten = rivals & (score[None, :] > score[:, None])
            best = in_tree & ~beaten.any(1)
            path = best
            for _ in range(N):
                path = best & ((nxt == -1) | path[jnp.maximum(nxt, 0)])
            return moving & (path | (cycle > 2))

        def step_one(key, state, actions):
            """rware's `step`: targets; a loaded robot facing a standing shelf that no loaded robot holds
            does not move; conflicts resolved (`commits`); then turns, loads, unloads (not on the highway),
            and a requested shelf on a goal is delivered: reward 1 to the robot there, a new request."""
            a, grid = state.agents, state.grid
            pos = jnp.stack([a.position.x, a.position.y], 1)
            carrying = a.is_carrying.astype(bool)
            ahead = jnp.clip(pos + steps[a.direction], 0, jnp.array([R - 1, C - 1]))
            target = jnp.where((actions == FORWARD)[:, None], ahead, pos)
            moving = (target != pos).any(-1)
            holder = grid[_AGENTS, target[:, 0], target[:, 1]] - 1  # robot on the target cell, -1 if none
            held = (holder >= 0) & carrying[jnp.maximum(holder, 0)]
            blocked = carrying & moving & (grid[_SHELVES, target[:, 0], target[:, 1]] > 0) & ~held
            moving &= ~blocked
            go = commits(pos, target, moving)
            actions = jnp.where((actions == FORWARD) & ~go, NOOP, actions)
            new = jnp.where(go[:, None], target, pos)
            shelf = jnp.where(carrying, grid[_SHELVES, pos[:, 0], pos[:, 1]] - 1, n_shelves)  # carried shelf
            shelves = state.shelves._replace(position=Position(
                state.shelves.position.x.at[shelf].set(new[:, 0], mode="drop"),
                state.shelves.position.y.at[shelf].set(new[:, 1], mode="drop"),
            ))  # fmt: skip
            toggle = actions == TOGGLE_LOAD
            load = toggle & ~carrying & (grid[_SHELVES, pos[:, 0], pos[:, 1]] > 0)
            unload = toggle & carrying & (highways[pos[:, 0], pos[:, 1]] == 0)
            turn = (actions == LEFT) | (actions == RIGHT)
            agents = a._replace(
                position=Position(new[:, 0], new[:, 1]),
                direction=jnp.where(turn, get_new_direction_after_turn(actions, a.direction), a.direction),
                is_carrying=((carrying | load) & ~unload).astype(a.is_carrying.dtype),
            )
            grid = regrid(agents, shelves)
            queue, rewards = state.request_queue, jnp.zeros(N, jnp.float32)
            for goal in np.asarray(generator.goals):  # (column, row), goal 0 then goal 1, as rware
                key, delivered, queue, shelves = jumanji_env._update_reward_and_request_queue(
                    key, jnp.float32(0), queue, grid, shelves, jnp.asarray(goal)
                )
                robot = grid[_AGENTS, goal[1], goal[0]] - 1
                rewards = rewards.at[jnp.where(robot >= 0, robot, N)].add(delivered, mode="drop")
            state = state.replace(grid=grid, agents=agents, shelves=shelves, request_queue=queue,
                                  step_count=state.step_count + 1)  # fmt: skip
            truncated = state.step_count >= episode_limit
            return state, views(state), (rewards.sum(), rewards, jnp.zeros((), bool), truncated)

        def observe(state):
            """[N, 71] rware's flattened observation: column, row, carrying, direction (one-hot, rware's
            order), on the highway; then per cell of the 3 x 3 around the robot (row by row, outside the
            grid empty): robot there, its direction (one-hot; UP when no robot), shelf there, requested."""
            a, s = state.agents, state.shelves
            rows = a.position.x[:, None, None] + jnp.arange(3)[None, :, None]  # in the grid padded by 1
            cols = a.position.y[:, None, None] + jnp.arange(3)[None, None, :]
            robots = jnp.pad(state.grid[_AGENTS], 1)[rows, cols].reshape(N, 9)
            shelves = jnp.pad(state.grid[_SHELVES], 1)[rows, cols].reshape(N, 9)
            direction = eye[to_rware[a.direction]]
            cells = jnp.concatenate([
                (robots > 0)[..., None],
                jnp.where((robots > 0)[..., None], direction[robots - 1], eye[0]),
                (shelves > 0)[..., None],
                jnp.where(shelves > 0, s.is_requested[shelves - 1], 0)[..., None],
            ], -1)  # fmt: skip
            own = [a.position.y[:, None], a.position.x[:, None], a.is_carrying[:, None], direction,
                   highways[a.position.x, a.position.y][:, None]]  # fmt: skip
            return jnp.concatenate([*(x.astype(jnp.float32) for x in own), cells.reshape(N, 63)], -1)

        def views(state):
            obs = observe(state)
            return obs, obs.reshape(-1), jnp.ones((N, 5), bool), jnp.ones(N, bool)

        def reset_one(key):
            state = strong(jax, generator(key))
            return state, views(state)

        self.spawn, self.observe, self.commits, self.regrid = generator, observe, commits, regrid  # for tests
        self.reset, self.step = batched_reset_step(jax, reset_one, step_one)
        self.warm: set[int] = set()  # batch sizes already compiled

    def idle_actions(self, num_envs: int) -> np.ndarray:
        return np.zeros((num_envs, self.n_agents), np.int32)  # NOOP


_CACHE: dict[tuple, _Compiled] = {}  # (env id, episode limit) -> _Compiled


class JaxRwareVecEnv(JaxVecEnv):
    """`num_envs` RWARE envs of one task, stepped together in one jitted call."""

    def __init__(self, env_id: str, num_envs: int, seed: int | None, episode_limit: int):
        key = (env_id, episode_limit)
        if key not in _CACHE:
            _CACHE[key] = _Compiled(env_id, episode_limit)
        self.c = c = _CACHE[key]
        self.env_id, self.num_envs, self.episode_limit = env_id, num_envs, episode_limit
        self.n_agents = c.n_agents
        self.observation_spaces = [gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)] * c.n_agents
        self.action_spaces = [gym.spaces.Discrete(5)] * c.n_agents
        self.state_dim = c.n_agents * OBS_DIM
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
    vectorization: str = "sync",
) -> Any:
    """See the module docstring for the options."""
    task_kwargs(env_id)  # an unknown task fails here, before any env is built
    check_backend(env_id, backend, BACKENDS, vectorization)
    if backend == "jax":
        return JaxRwareVecEnv(env_id, num_envs, seed, episode_limit)
    fns = [functools.partial(_make_adapter, env_id, episode_limit) for _ in range(num_envs)]
    return GymVectorMultiAgentEnv(env_id, fns, vectorization, seed, episode_limit=episode_limit)
