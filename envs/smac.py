"""Real StarCraft II SMAC (`smac-<map>`, e.g. `smac-3m`, `smac-MMM2`), where it is installed.

Needs StarCraft II (the Linux build, with the SMAC maps in StarCraftII/Maps/SMAC_Maps) and
the `smac` python client from https://github.com/oxwhirl/smac (NOT the PyPI package `smac`,
an unrelated hyperparameter optimiser):

    pip install git+https://github.com/oxwhirl/smac.git
    # StarCraft II: see the SMAC README; then, unless it is in ~/StarCraftII:
    export SC2PATH=/path/to/StarCraftII

Without them, `make` raises `MissingDependencyError`; `smax-<map>` runs the same scenarios in
JaxMARL's SMAX (jax, no StarCraft II needed; no MMM2 there).

The batch is `num_envs` `StarCraft2Env` instances stepped one after the other in this
process. Env e is seeded with seed + e. Terminated = one side eliminated; truncated = SMAC's
episode limit reached with both sides alive; the agents alive are those for which SMAC offers more
than the no-op. Options go to `StarCraft2Env` (e.g. `difficulty="7"`, `reward_sparse=True`).

UNTESTED HERE: this path was written against SMAC's documented API on a machine without
StarCraft II; only the missing-dependency error is covered by the tests.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import gymnasium as gym
import numpy as np

from envs.core import MissingDependencyError, MultiAgentVecEnv


def _starcraft2_env_class(env_id: str):
    map_name = env_id[len("smac-") :]
    how = (
        f"env '{env_id}' needs StarCraft II and the SMAC python client from github.com/oxwhirl/smac "
        f"(not the PyPI package named smac). Install: pip install git+https://github.com/oxwhirl/smac.git, "
        f"then install StarCraft II with the SMAC maps and set SC2PATH (default ~/StarCraftII). "
        f"Without StarCraft II, use 'smax-{map_name}' (JaxMARL's SMAX re-implementation of the scenario)."
    )
    try:
        StarCraft2Env = importlib.import_module("smac.env").StarCraft2Env
    except (ImportError, AttributeError) as e:
        raise MissingDependencyError(f"{how} ({e})") from e
    sc2path = os.path.expanduser(os.environ.get("SC2PATH", "~/StarCraftII"))
    if not os.path.isdir(sc2path):
        raise MissingDependencyError(f"{how} (StarCraft II not found at {sc2path!r})")
    return StarCraft2Env


class SMACVecEnv(MultiAgentVecEnv):
    metric_names = ("win",)

    def __init__(self, env_id: str, num_envs: int = 1, seed: int | None = None, **options):
        StarCraft2Env = _starcraft2_env_class(env_id)
        seed = 0 if seed is None else seed
        map_name = env_id[len("smac-") :]
        self.envs = [StarCraft2Env(map_name=map_name, seed=seed + e, **options) for e in range(num_envs)]
        info = self.envs[0].get_env_info()
        self.env_id, self.num_envs = env_id, num_envs
        self.n_agents, self.state_dim = info["n_agents"], int(info["state_shape"])
        self.episode_limit = int(info["episode_limit"])
        self.observation_spaces = [gym.spaces.Box(-np.inf, np.inf, (info["obs_shape"],), np.float32)] * self.n_agents
        self.action_spaces = [gym.spaces.Discrete(info["n_actions"])] * self.n_agents
        self._init_sizes()
        self._avail = None

    def _observe(self, env) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        avail = np.array(env.get_avail_actions(), bool)
        return np.array(env.get_obs(), np.float32), np.array(env.get_state(), np.float32), avail

    def _pack(self, rows) -> dict[str, np.ndarray]:
        obs, state, avail = (np.stack(x) for x in zip(*rows))
        # SMAC offers only the no-op (action 0) to dead agents
        alive = avail[:, :, 1:].any(-1)
        return {"obs": obs, "state": state, "alive": alive, "avail": avail}

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        for env in self.envs:
            env.reset()
        self._return = np.zeros(self.num_envs)
        self._length = np.zeros(self.num_envs, np.int64)
        batch = self._pack([self._observe(env) for env in self.envs])
        self._avail = batch["avail"]  # the next step's actions are checked against it
        return batch

    def step(self, actions):
        actions = self.check_actions(actions, self._avail)
        E = self.num_envs
        reward = np.zeros(E, np.float32)
        terminated, truncated, win = np.zeros(E, bool), np.zeros(E, bool), np.zeros(E)
        rows, final_rows = [], []
        for e, env in enumerate(self.envs):
            r, done, info = env.step(actions[e].tolist())
            row = self._observe(env)
            final_rows.append(row)
            reward[e], win[e] = r, float(info.get("battle_won", False))
            # SMAC sets info["episode_limit"] only with continuing_episode=True: a time-out is an
            # end at the step limit that is not a won battle and leaves an ally alive
            timed_out = env._episode_steps >= env.episode_limit and not win[e] and row[2][:, 1:].any()
            truncated[e] = bool(done) and bool(info.get("episode_limit", timed_out))
            terminated[e] = bool(done) and not truncated[e]
            if done:
                env.reset()
                row = self._observe(env)
            rows.append(row)
        self._return += reward
        self._length += 1
        info: dict[str, Any] = {
            "agent_rewards": np.repeat(reward[:, None], self.n_agents, axis=1),
            **{f"final_{key}": value for key, value in self._pack(final_rows).items()},
        }
        ended = terminated | truncated
        if ended.any():
            info["episode"] = {
                "return": np.where(ended, self._return, 0.0),
                "length": np.where(ended, self._length, 0),
                "win": np.where(ended, win, 0.0),
            }
            self._return[ended], self._length[ended] = 0.0, 0
        batch = self._pack(rows)
        self._avail = batch["avail"]
        return batch, reward, terminated, truncated, info

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make(env_id: str, num_envs: int = 1, seed: int | None = None, **options) -> SMACVecEnv:
    """A batch of `num_envs` real StarCraft II SMAC battles (see the module docstring)."""
    return SMACVecEnv(env_id, num_envs, seed, **options)
