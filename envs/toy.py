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

Every agent observes the constant 1 (there is nothing to observe in a one-step game); the
state is the same constant. Every episode terminates after its one step.
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
