"""The environment contract shared by every algorithm file, and the machinery behind it.

`MultiAgentVecEnv` is the contract (see DESIGN.md): a batch of `num_envs` copies of one
cooperative multi-agent task, stepped together, auto-resetting on the same step.

`ParallelEnvAdapter` turns one PettingZoo parallel env into a single gymnasium `Env` whose
observation is a dict of padded per-agent arrays, so that gymnasium's own vector envs
(`SyncVectorEnv`, `AsyncVectorEnv`, both in same-step auto-reset mode) do the batching;
`GymVectorMultiAgentEnv` puts the contract on top of such a vector env.
`AgentTupleParallelEnv` makes a PettingZoo parallel env of a gymnasium env with one space and one
reward per agent (EPyMARL's convention: LBF, RWARE), so the same machinery batches those too.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import signal
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np


# ----------------------------------------------------------------------------- errors
class MissingDependencyError(ImportError):
    """An optional backend package is not installed; the message names the pip command."""


def require(module: str, pip_name: str, env_id: str):
    """Import `module`, or raise a `MissingDependencyError` that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"env '{env_id}' needs the python package '{module}', which is not installed "
            f"({e}). Install it with:  pip install {pip_name}   "
            f"(or install everything with:  pip install -r requirements.txt)"
        ) from e


# --------------------------------------------------------------------------- contract
class MultiAgentVecEnv:
    """A batched, auto-resetting cooperative multi-agent environment.

    Attributes every family fills in:
        env_id, num_envs, n_agents,
        observation_spaces, action_spaces: per-agent gymnasium spaces (true sizes),
        obs_dims, act_dims: per-agent true observation sizes and action sizes
            (number of actions if discrete, action dimension if continuous),
        obs_dim = max(obs_dims), state_dim,
        discrete: bool; n_actions = max(act_dims) if discrete else 0;
        act_dim = max(act_dims) if continuous else 0,
        act_low, act_high: float32 [N, act_dim] bounds (continuous only; padding [-1, 1]),
        episode_limit: steps after which an episode is truncated,
        metric_names: the task's own per-episode metrics in info["episode"] (e.g. "win").

    reset(seed) -> batch; step(actions) -> (batch, reward, terminated, truncated, info).
    batch: "obs" float32 [E, N, obs_dim] (zero padded), "state" float32 [E, state_dim],
    "alive" bool [E, N] (False for agents that died in this episode, SMAX; else all True),
    and for discrete actions "avail" bool [E, N, n_actions] (padded actions False).
    info: "agent_rewards" float32 [E, N]; "final_obs", "final_state", "final_alive" and (discrete)
    "final_avail": the batch's arrays of the step that ended an episode (rows of envs that did
    not end hold the current batch's); "episode" (only when an episode ended): dict of [E] arrays.
    """

    env_id: str
    num_envs: int
    n_agents: int
    observation_spaces: list[gym.Space]
    action_spaces: list[gym.Space]
    obs_dims: list[int]
    act_dims: list[int]
    state_dim: int
    discrete: bool
    episode_limit: int
    metric_names: tuple[str, ...] = ()

    def _init_sizes(self) -> None:
        """Derive the padded sizes and bounds from the per-agent spaces."""
        self.obs_dims = [int(np.prod(s.shape)) for s in self.observation_spaces]
        self.obs_dim = max(self.obs_dims)
        self.discrete = isinstance(self.action_spaces[0], gym.spaces.Discrete)
        if self.discrete:
            self.act_dims = [int(s.n) for s in self.action_spaces]
            self.n_actions, self.act_dim = max(self.act_dims), 0
        else:
            self.act_dims = [int(np.prod(s.shape)) for s in self.action_spaces]
            self.n_actions, self.act_dim = 0, max(self.act_dims)
            self.act_low = -np.ones((self.n_agents, self.act_dim), np.float32)
            self.act_high = np.ones((self.n_agents, self.act_dim), np.float32)
            for i, s in enumerate(self.action_spaces):
                self.act_low[i, : self.act_dims[i]] = s.low.reshape(-1)
                self.act_high[i, : self.act_dims[i]] = s.high.reshape(-1)
        # padded actions are never available
        self.pad_avail = np.zeros((self.n_agents, max(self.n_actions, 1)), bool)
        for i, n in enumerate(self.act_dims if self.discrete else []):
            self.pad_avail[i, :n] = True

    def check_actions(self, actions, avail: np.ndarray | None) -> np.ndarray:
        """Validate a batch of actions against the contract; return it as a numpy array."""
        actions = np.asarray(actions)
        E, N = self.num_envs, self.n_agents
        if self.discrete:
            if actions.shape != (E, N):
                raise ValueError(
                    f"{self.env_id}: discrete actions must have shape (num_envs, n_agents) = {(E, N)}, "
                    f"got {actions.shape}"
                )
            if not np.issubdtype(actions.dtype, np.integer):
                raise ValueError(
                    f"{self.env_id}: discrete actions must be integers, got dtype {actions.dtype}; "
                    f"pass e.g. actions.astype(np.int64)"
                )
            bad = (actions < 0) | (actions >= np.asarray(self.act_dims))
            if bad.any():
                e, i = np.argwhere(bad)[0]
                raise ValueError(
                    f"{self.env_id}: action {actions[e, i]} of agent {i} in env {e} is out of range "
                    f"[0, {self.act_dims[i]})"
                )
            if avail is not None:
                ok = np.take_along_axis(avail, actions[..., None], axis=2)[..., 0]
                if not ok.all():
                    e, i = np.argwhere(~ok)[0]
                    raise ValueError(
                        f"{self.env_id}: action {actions[e, i]} of agent {i} in env {e} is not available "
                        f"now; sample only actions where batch['avail'] is True"
                    )
            return actions.astype(np.int64)
        if actions.shape != (E, N, self.act_dim):
            raise ValueError(
                f"{self.env_id}: continuous actions must have shape (num_envs, n_agents, act_dim) = "
                f"{(E, N, self.act_dim)}, got {actions.shape}"
            )
        if not np.issubdtype(actions.dtype, np.floating):
            raise ValueError(f"{self.env_id}: continuous actions must be floats, got dtype {actions.dtype}")
        return actions.astype(np.float32)

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def step(self, actions):
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = f"n_actions={self.n_actions}" if self.discrete else f"act_dim={self.act_dim}"
        return (
            f"<{type(self).__name__} {self.env_id}: num_envs={self.num_envs}, n_agents={self.n_agents}, "
            f"obs_dims={self.obs_dims}, state_dim={self.state_dim}, {kind}, act_dims={self.act_dims}>"
        )


def random_actions(env: MultiAgentVecEnv, batch: dict, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random valid actions for a batch: an available action per agent (discrete), or
    a uniform sample within the bounds (continuous). For tests, benchmarks and baselines."""
    if env.discrete:
        # a random score per action, minus infinity where unavailable: the argmax is a valid action
        scores = rng.random(batch["avail"].shape)
        return np.where(batch["avail"], scores, -np.inf).argmax(-1)
    return rng.uniform(env.act_low, env.act_high, (env.num_envs, *env.act_low.shape)).astype(np.float32)


# ------------------------------------------------- PettingZoo parallel env -> gym.Env
class ParallelEnvAdapter(gym.Env):
    """One PettingZoo parallel env as a gymnasium Env with padded per-agent arrays.

    Observation: dict(obs [N, obs_dim], state [state_dim], alive [N], avail [N, n_actions]
    (discrete)). Action: int [N] or float [N, act_dim], padded entries ignored.
    The team reward is the sum (`team_reward="sum"`) or mean of the agents' rewards.
    On the last step of an episode, info["episode"] holds return, length, the episode's
    mean of each metric that `step_metrics_fn(parallel_env)` returns after every step, and the
    metrics that `episode_metrics_fn(parallel_env)` returns on that last step (e.g. a win).
    """

    def __init__(
        self,
        make_parallel_env: Callable[[], Any],
        team_reward: str = "sum",
        step_metrics_fn: Callable[[Any], dict[str, float]] | None = None,
        episode_metrics_fn: Callable[[Any], dict[str, float]] | None = None,
    ):
        self.env = make_parallel_env()
        self.agents = list(self.env.possible_agents)
        self.n_agents = len(self.agents)
        self.team_reward = np.sum if team_reward == "sum" else np.mean
        # per-step metrics are averaged over the episode (e.g. traffic waiting time)
        self.step_metrics_fn, self.episode_metrics_fn = step_metrics_fn, episode_metrics_fn
        obs_spaces = [self.env.observation_space(a) for a in self.agents]
        act_spaces = [self.env.action_space(a) for a in self.agents]
        self.obs_dims = [int(np.prod(s.shape)) for s in obs_spaces]
        self.obs_dim = max(self.obs_dims)
        self.discrete = isinstance(act_spaces[0], gym.spaces.Discrete)
        self.act_dims = [int(s.n) if self.discrete else int(np.prod(s.shape)) for s in act_spaces]
        # the global state: the env's own state() where it has one, else all observations
        self.env.reset(seed=0)
        try:
            self.state_dim = int(np.asarray(self.env.state()).size)
            self._env_state = True
        except (NotImplementedError, AttributeError):
            self.state_dim, self._env_state = sum(self.obs_dims), False
        spaces = {
            "obs": gym.spaces.Box(-np.inf, np.inf, (self.n_agents, self.obs_dim), np.float32),
            "state": gym.spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32),
            "alive": gym.spaces.MultiBinary(self.n_agents),
        }
        if self.discrete:
            spaces["avail"] = gym.spaces.MultiBinary((self.n_agents, max(self.act_dims)))
            # an agent's own actions are available, unless the env's infos[agent]["action_mask"] says otherwise
            self._avail = np.zeros((self.n_agents, max(self.act_dims)), np.int8)
            for i, n in enumerate(self.act_dims):
                self._avail[i, :n] = 1
            self.action_space = gym.spaces.MultiDiscrete(self.act_dims)
        else:
            act_dim = max(self.act_dims)
            low = -np.ones((self.n_agents, act_dim), np.float32)
            high = np.ones((self.n_agents, act_dim), np.float32)
            for i, s in enumerate(act_spaces):
                low[i, : self.act_dims[i]], high[i, : self.act_dims[i]] = s.low, s.high
            self.action_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self.agent_observation_spaces, self.agent_action_spaces = obs_spaces, act_spaces

    @property
    def space_info(self) -> dict[str, Any]:
        """What the vector env needs to know of the task (read from worker processes too)."""
        return {
            "n_agents": self.n_agents,
            "observation_spaces": self.agent_observation_spaces,
            "action_spaces": self.agent_action_spaces,
            "state_dim": self.state_dim,
        }

    def _state(self, obs: dict) -> np.ndarray:
        if self._env_state:
            return np.asarray(self.env.state(), np.float32).reshape(-1)
        state = np.zeros(self.state_dim, np.float32)
        parts = [np.asarray(obs[a], np.float32).reshape(-1) if a in obs else np.zeros(d, np.float32)
                 for a, d in zip(self.agents, self.obs_dims)]
        state[:] = np.concatenate(parts)
        return state

    def _pack(self, obs: dict, infos: dict) -> dict[str, np.ndarray]:
        padded = np.zeros((self.n_agents, self.obs_dim), np.float32)
        alive = np.zeros(self.n_agents, np.int8)
        for i, a in enumerate(self.agents):
            if a in obs:
                padded[i, : self.obs_dims[i]] = np.asarray(obs[a]).reshape(-1)
                alive[i] = 1
        out = {"obs": padded, "state": self._state(obs), "alive": alive}
        if self.discrete:
            out["avail"] = self._avail.copy()  # a new array: the vector env may keep it as final obs
            for i, a in enumerate(self.agents):
                if "action_mask" in infos.get(a, {}):
                    out["avail"][i, : self.act_dims[i]] = infos[a]["action_mask"]
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, infos = self.env.reset(seed=seed, options=options)
        self._return, self._length, self._step_metrics = 0.0, 0, {}
        return self._pack(obs, infos), {}

    def step(self, action):
        if self.discrete:
            actions = {a: int(action[i]) for i, a in enumerate(self.agents) if a in self.env.agents}
        else:
            actions = {
                a: np.asarray(action[i, : self.act_dims[i]], np.float32)
                for i, a in enumerate(self.agents)
                if a in self.env.agents
            }
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        agent_rewards = np.array([rewards.get(a, 0.0) for a in self.agents], np.float32)
        reward = float(self.team_reward(agent_rewards))
        truncated = any(truncs.values()) and not any(terms.values())
        # an env that removed every agent without saying why has terminated
        terminated = any(terms.values()) or (not self.env.agents and not truncated)
        self._return += reward
        self._length += 1
        if self.step_metrics_fn is not None:
            for k, v in self.step_metrics_fn(self.env).items():
                self._step_metrics[k] = self._step_metrics.get(k, 0.0) + v
        info: dict[str, Any] = {"agent_rewards": agent_rewards}
        if terminated or truncated:
            episode = {"return": self._return, "length": self._length}
            episode.update({k: v / self._length for k, v in self._step_metrics.items()})
            if self.episode_metrics_fn is not None:
                episode.update(self.episode_metrics_fn(self.env))
            info["episode"] = episode
        return self._pack(obs, infos), reward, terminated, truncated, info

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


# ------------------------------- gymnasium env with one entry per agent -> PettingZoo parallel
class AgentTupleParallelEnv:
    """A gymnasium env in EPyMARL's `gymma` convention (Tuple observation and action spaces and a
    list of rewards, one entry per agent: LBF, RWARE) as a PettingZoo parallel env, so that
    `ParallelEnvAdapter` can wrap it.

    Such envs say only `done`; `terminal_fn(env)` tells whether the episode reached a terminal state
    (else a `done`, or `episode_limit` steps, truncates it). `action_mask_fn(env)`, where given, returns
    the actions available now, [N, n_actions] bool, passed on as infos[agent]["action_mask"].
    """

    def __init__(
        self,
        env: gym.Env,
        episode_limit: int,
        terminal_fn: Callable[[gym.Env], bool],
        action_mask_fn: Callable[[gym.Env], np.ndarray] | None = None,
    ):
        self.env, self.episode_limit = env, episode_limit
        self.terminal_fn, self.action_mask_fn = terminal_fn, action_mask_fn
        self.possible_agents = [f"agent_{i}" for i in range(len(env.action_space))]
        self.agents = list(self.possible_agents)
        self._steps = 0

    def observation_space(self, agent: str) -> gym.Space:
        return self.env.observation_space[self.possible_agents.index(agent)]

    def action_space(self, agent: str) -> gym.Space:
        return self.env.action_space[self.possible_agents.index(agent)]

    def state(self):
        raise NotImplementedError  # the adapter concatenates the observations, as EPyMARL does

    def _infos(self) -> dict:
        if self.action_mask_fn is None:
            return {a: {} for a in self.agents}
        masks = self.action_mask_fn(self.env)
        return {a: {"action_mask": m} for a, m in zip(self.agents, masks)}

    def reset(self, seed: int | None = None, options: dict | None = None):
        obs, _ = self.env.reset(seed=seed, options=options)
        self._steps = 0
        return dict(zip(self.agents, obs)), self._infos()

    def step(self, actions: dict):
        obs, rewards, done, truncated, _ = self.env.step([actions[a] for a in self.agents])
        self._steps += 1
        terminal = bool(self.terminal_fn(self.env))
        cut = not terminal and (bool(done) or bool(truncated) or self._steps >= self.episode_limit)
        return (
            dict(zip(self.agents, obs)),
            dict(zip(self.agents, map(float, rewards))),
            {a: terminal for a in self.agents},
            {a: cut for a in self.agents},
            self._infos(),
        )

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


# ------------------------------------------------------ gymnasium vector env -> contract
def _ignore_ctrl_c(make_env: Callable[[], ParallelEnvAdapter]) -> ParallelEnvAdapter:
    """Runs in an async worker: the terminal's Ctrl-C goes to the whole process group, but it is meant
    for the main process (which finishes its iteration and saves the model), so the worker ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return make_env()


class GymVectorMultiAgentEnv(MultiAgentVecEnv):
    """The contract on top of gymnasium's Sync/AsyncVectorEnv over `ParallelEnvAdapter`s.

    `vectorization="sync"` steps the envs one after the other in this process;
    `"async"` runs one worker process per env (needed where a simulator allows only one
    instance per process, e.g. libsumo).
    """

    def __init__(
        self,
        env_id: str,
        env_fns: list[Callable[[], ParallelEnvAdapter]],
        vectorization: str = "sync",
        seed: int | None = None,
        episode_limit: int = 0,
        metric_names: tuple[str, ...] = (),
    ):
        self.env_id, self.num_envs, self._seed = env_id, len(env_fns), seed
        self.episode_limit, self.metric_names = episode_limit, metric_names
        mode = gym.vector.AutoresetMode.SAME_STEP
        if vectorization == "sync":
            self.vec = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=mode)
        elif vectorization == "async":
            env_fns = [functools.partial(_ignore_ctrl_c, fn) for fn in env_fns]
            self.vec = gym.vector.AsyncVectorEnv(env_fns, autoreset_mode=mode, context="spawn")
        else:
            raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
        info = self.vec.get_attr("space_info")[0]
        self.n_agents = info["n_agents"]
        self.observation_spaces = list(info["observation_spaces"])
        self.action_spaces = list(info["action_spaces"])
        self.state_dim = info["state_dim"]
        self._init_sizes()
        self._avail = None

    def _batch(self, obs: dict) -> dict[str, np.ndarray]:
        batch = {
            "obs": np.asarray(obs["obs"], np.float32),
            "state": np.asarray(obs["state"], np.float32),
            "alive": np.asarray(obs["alive"]).astype(bool),
        }
        if self.discrete:
            batch["avail"] = np.asarray(obs["avail"]).astype(bool)
            self._avail = batch["avail"]
        return batch

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        # the first reset uses make()'s seed; env e of the batch is seeded with seed + e
        seed, self._seed = (self._seed if seed is None else seed), None
        with self._worker_errors():
            obs, _ = self.vec.reset(seed=seed)
        return self._batch(obs)

    def step(self, actions):
        actions = self.check_actions(actions, self._avail)
        with self._worker_errors():
            obs, reward, terminated, truncated, vinfo = self.vec.step(actions)
        batch = self._batch(obs)
        done = terminated | truncated
        # per-agent rewards: from the step's info, or, for envs that just ended, from final_info
        agent_rewards = np.zeros((self.num_envs, self.n_agents), np.float32)
        for source in (vinfo, vinfo.get("final_info", {})):
            if "agent_rewards" in source:
                rows = source["_agent_rewards"]
                agent_rewards[rows] = source["agent_rewards"][rows]
        info: dict[str, Any] = {"agent_rewards": agent_rewards}
        for key in batch:  # final_obs, final_state, final_alive, final_avail
            info[f"final_{key}"] = batch[key].copy()
        if done.any():
            episode = {k: np.zeros(self.num_envs) for k in ("return", "length", *self.metric_names)}
            for e in np.flatnonzero(done):
                final = vinfo["final_obs"][e]
                for key in batch:
                    info[f"final_{key}"][e] = final[key]
                for k, v in vinfo["final_info"]["episode"].items():
                    if k in episode:
                        episode[k][e] = v[e]
            info["episode"] = episode
        return batch, reward.astype(np.float32), terminated.astype(bool), truncated.astype(bool), info

    def render(self):
        return self.vec.call("render")[0]  # the frame of env 0

    @contextlib.contextmanager
    def _worker_errors(self):
        """A worker process that died (killed, crashed simulator) surfaces as an error naming the env."""
        try:
            yield
        except (BrokenPipeError, EOFError, ConnectionResetError) as e:
            dead = [f"env {i} (exit code {p.exitcode})" for i, p in enumerate(getattr(self.vec, "processes", []))
                    if not p.is_alive()]  # fmt: skip
            raise RuntimeError(
                f"{self.env_id}: a worker process died: {', '.join(dead) or 'unknown worker'} of {self.num_envs} "
                f"({type(e).__name__}). It was killed or its simulator crashed (e.g. out of memory); run again"
            ) from e

    def close(self) -> None:
        if any(not p.is_alive() for p in getattr(self.vec, "processes", [])):  # a dead worker cannot answer
            with contextlib.suppress(BrokenPipeError, EOFError, ConnectionResetError):
                self.vec.close(terminate=True)  # end the others
        self.vec.close()
