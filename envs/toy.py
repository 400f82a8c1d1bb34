"""Toy cooperative games, batched in numpy, one step per episode.

- `matrix-climbing` (Claus & Boutilier 1998): two agents, three actions, payoff
  [[11, -30, 0], [-30, 7, 6], [0, 0, 5]]. Optimum 11 at (0, 0); a uniformly random joint
  policy scores -31/9 = -3.44 on average; independent learners often settle at 7 or 5.
- `matrix-penalty`: payoff [[k, 0, 10], [0, 2, 0], [10, 0, k]] with penalty k (option
  `penalty`, default -100). Optimum 10 at (0, 2) or (2, 0); random scores (2k + 22)/9
  (-19.8 for k = -100); the safe joint action (1, 1) gives 2.
- `product-game` (the HATRPO paper's / the lecture's example): two agents, each action a real
  number in [-2, 2] (clipped), shared reward a1 * a2. Optimum 4 at (2, 2) or (-2, -2); a
  policy with zero-mean actions scores 0 on average.

In these three, every agent observes the constant 1 (there is nothing to observe in a one-step
game); the state is the same constant. Every episode terminates after its one step.

- `memory-cue` (a task that needs memory): two agents, episodes of `length` steps (option,
  default 4). At the first step both agents see a cue c in {0, 1} (drawn uniformly per episode);
  afterwards the cue is hidden. At the last step each agent picks 0 or 1 and the team reward is
  the fraction of agents that picked c (every other step rewards 0). Observation and state:
  [cue one-hot (zeros after the first step), one-hot of the step]. Optimum 1.0; a policy without
  memory sees nothing at the last step that depends on c, so it scores 0.5 in expectation
  whatever it does (chance).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs.core import MultiAgentVecEnv

CLIMBING = np.array([[11, -30, 0], [-30, 7, 6], [0, 0, 5]], np.float32)


def penalty_matrix(k: float) -> np.ndarray:
    return np.array([[k, 0, 10], [0, 2, 0], [10, 0, k]], np.float32)


class ToyGameEnv(MultiAgentVecEnv):
    episode_limit = 1

    def __init__(self, env_id: str, num_envs: int = 1, seed: int | None = None, penalty: float = -100.0):
        self.env_id, self.num_envs, self.n_agents = env_id, num_envs, 2
        obs_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.observation_spaces = [obs_space] * 2
        if env_id == "product-game":
            self.payoff = None
            self.action_spaces = [gym.spaces.Box(-2.0, 2.0, (1,), np.float32)] * 2
        else:
            self.payoff = CLIMBING if env_id == "matrix-climbing" else penalty_matrix(penalty)
            self.action_spaces = [gym.spaces.Discrete(3)] * 2
        self.state_dim = 1
        self._init_sizes()
        self._seed = seed

    def _batch(self) -> dict[str, np.ndarray]:
        E, N = self.num_envs, self.n_agents
        batch = {
            "obs": np.ones((E, N, 1), np.float32),
            "state": np.ones((E, 1), np.float32),
            "alive": np.ones((E, N), bool),
        }
        if self.discrete:
            batch["avail"] = np.ones((E, N, self.n_actions), bool)
        return batch

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        return self._batch()

    def step(self, actions):
        actions = self.check_actions(actions, None)
        if self.discrete:
            reward = self.payoff[actions[:, 0], actions[:, 1]]
        else:
            a = np.clip(actions[:, :, 0], -2.0, 2.0)
            reward = a[:, 0] * a[:, 1]
        batch = self._batch()
        E = self.num_envs
        info = {
            "agent_rewards": np.repeat(reward[:, None], 2, axis=1).astype(np.float32),
            **{f"final_{key}": value.copy() for key, value in batch.items()},
            "episode": {"return": reward.astype(np.float64), "length": np.ones(E)},
        }
        return batch, reward.astype(np.float32), np.ones(E, bool), np.zeros(E, bool), info


class MemoryCueEnv(MultiAgentVecEnv):
    """`memory-cue`: remember a cue shown at the first step and act on it at the last (module docstring)."""

    def __init__(self, env_id: str, num_envs: int = 1, seed: int | None = None, length: int = 4):
        if not isinstance(length, int) or length < 2:
            raise ValueError(f"memory-cue: length must be an int >= 2 (a cue step and an action step), got {length!r}")
        self.env_id, self.num_envs, self.n_agents, self.length = env_id, num_envs, 2, length
        self.episode_limit = length
        obs_space = gym.spaces.Box(0.0, 1.0, (2 + length,), np.float32)
        self.observation_spaces = [obs_space] * 2
        self.action_spaces = [gym.spaces.Discrete(2)] * 2
        self.state_dim = 2 + length
        self._init_sizes()
        self._seed = 0 if seed is None else seed
        self._rngs = None

    def _batch(self) -> dict[str, np.ndarray]:
        E, N = self.num_envs, self.n_agents
        view = np.zeros((E, 2 + self.length), np.float32)
        first = self._t == 0
        view[first, self._cue[first]] = 1.0
        view[np.arange(E), 2 + self._t] = 1.0
        return {
            "obs": np.repeat(view[:, None], N, axis=1),
            "state": view,
            "alive": np.ones((E, N), bool),
            "avail": np.ones((E, N, 2), bool),
        }

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        if seed is not None or self._rngs is None:
            base = self._seed if seed is None else seed
            self._rngs = [np.random.default_rng(base + e) for e in range(self.num_envs)]
        self._cue = np.array([rng.integers(2) for rng in self._rngs])
        self._t = np.zeros(self.num_envs, np.int64)
        self._return = np.zeros(self.num_envs)
        return self._batch()

    def step(self, actions):
        if self._rngs is None:
            raise RuntimeError(f"{self.env_id}: call reset() before step()")
        actions = self.check_actions(actions, None)
        E = self.num_envs
        last = self._t == self.length - 1
        agent_rewards = np.where(last[:, None], (actions == self._cue[:, None]).astype(np.float32), 0.0)
        reward = agent_rewards.mean(1).astype(np.float32)
        self._return += reward
        self._t += 1
        final = self._batch_final() if last.any() else None
        info = {"agent_rewards": agent_rewards.astype(np.float32)}
        if last.any():
            info["episode"] = {"return": np.where(last, self._return, 0.0), "length": np.where(last, self.length, 0)}
            for e in np.flatnonzero(last):  # same-step auto-reset of the ended episodes
                self._cue[e], self._t[e], self._return[e] = self._rngs[e].integers(2), 0, 0.0
        batch = self._batch()
        final = batch if final is None else {k: np.where(_rows(last, v), final[k], v) for k, v in batch.items()}
        info.update({f"final_{key}": value for key, value in final.items()})
        return batch, reward, last.copy(), np.zeros(E, bool), info

    def _batch_final(self) -> dict[str, np.ndarray]:
        """The batch as it stands after the last step (step index past the end shown as the last one)."""
        t = self._t
        self._t = np.minimum(t, self.length - 1)
        batch = self._batch()
        self._t = t
        return batch


def _rows(mask: np.ndarray, value: np.ndarray) -> np.ndarray:
    """mask [E] broadcast against value [E, ...]."""
    return mask.reshape(mask.shape + (1,) * (value.ndim - 1))
