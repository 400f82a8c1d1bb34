"""Checks of the environment contract (DESIGN.md), shared by the env test files."""

from __future__ import annotations

import numpy as np

import envs
from envs import random_actions


def check_sizes(env: envs.MultiAgentVecEnv) -> None:
    N = env.n_agents
    assert len(env.observation_spaces) == len(env.action_spaces) == len(env.obs_dims) == len(env.act_dims) == N
    assert env.obs_dim == max(env.obs_dims)
    if env.discrete:
        assert env.n_actions == max(env.act_dims) and env.act_dim == 0
    else:
        assert env.act_dim == max(env.act_dims) and env.n_actions == 0
        assert env.act_low.shape == env.act_high.shape == (N, env.act_dim)
        assert (env.act_low < env.act_high).all()


def assert_same_interface(fast: envs.MultiAgentVecEnv, ref: envs.MultiAgentVecEnv) -> dict:
    """A second backend of a family against its reference: the same sizes, spaces and batch arrays.
    Returns the second backend's first batch."""
    for name in ("n_agents", "obs_dims", "obs_dim", "state_dim", "discrete", "n_actions", "act_dims",
                 "episode_limit", "metric_names"):  # fmt: skip
        assert getattr(fast, name) == getattr(ref, name), name
    assert fast.observation_spaces == ref.observation_spaces
    assert fast.action_spaces == ref.action_spaces
    a, b = fast.reset(), ref.reset()
    assert {k: (v.shape[1:], v.dtype) for k, v in a.items()} == {k: (v.shape[1:], v.dtype) for k, v in b.items()}
    return a


def check_batch(env: envs.MultiAgentVecEnv, batch: dict) -> None:
    E, N = env.num_envs, env.n_agents
    assert batch["obs"].shape == (E, N, env.obs_dim) and batch["obs"].dtype == np.float32
    assert batch["state"].shape == (E, env.state_dim) and batch["state"].dtype == np.float32
    assert batch["alive"].shape == (E, N) and batch["alive"].dtype == bool
    assert np.isfinite(batch["obs"]).all() and np.isfinite(batch["state"]).all()
    for i, d in enumerate(env.obs_dims):
        assert (batch["obs"][:, i, d:] == 0).all(), f"observation padding of agent {i} is not zero"
    if env.discrete:
        assert batch["avail"].shape == (E, N, env.n_actions) and batch["avail"].dtype == bool
        for i, n in enumerate(env.act_dims):
            assert not batch["avail"][:, i, n:].any(), f"padded actions of agent {i} are available"
        # every living agent can do something
        assert batch["avail"].any(-1)[batch["alive"]].all()
    else:
        assert "avail" not in batch


def check_step(env: envs.MultiAgentVecEnv, out: tuple) -> None:
    batch, reward, terminated, truncated, info = out
    E, N = env.num_envs, env.n_agents
    check_batch(env, batch)
    assert reward.shape == (E,) and reward.dtype == np.float32 and np.isfinite(reward).all()
    assert terminated.shape == truncated.shape == (E,)
    assert terminated.dtype == truncated.dtype == bool
    assert not (terminated & truncated).any(), "an episode is either terminated or truncated"
    assert info["final_obs"].shape == (E, N, env.obs_dim)
    assert info["final_state"].shape == (E, env.state_dim)
    assert info["final_alive"].shape == (E, N) and info["final_alive"].dtype == bool
    if env.discrete:
        assert info["final_avail"].shape == (E, N, env.n_actions) and info["final_avail"].dtype == bool
        assert info["final_avail"].any(-1)[info["final_alive"]].all()
    else:
        assert "final_avail" not in info
    assert info["agent_rewards"].shape == (E, N)
    done = terminated | truncated
    assert ("episode" in info) == bool(done.any())
    if done.any():
        episode = info["episode"]
        for key in ("return", "length", *env.metric_names):
            assert episode[key].shape == (E,), key
        assert (episode["length"][done] >= 1).all()
        assert (episode["length"][done] <= env.episode_limit).all()
    # rows that did not end: the final arrays are the current batch's
    for key in batch:
        np.testing.assert_array_equal(info[f"final_{key}"][~done], batch[key][~done])


def rollout(env: envs.MultiAgentVecEnv, steps: int, seed: int = 0, check: bool = True):
    """Random actions for `steps` steps; returns the list of step outputs."""
    rng = np.random.default_rng(seed)
    batch = env.reset(seed=seed)
    if check:
        check_sizes(env)
        check_batch(env, batch)
    outs = []
    for _ in range(steps):
        out = env.step(random_actions(env, batch, rng))
        if check:
            check_step(env, out)
        outs.append(out)
        batch = out[0]
    return outs


def assert_same_trajectories(make_env, steps: int) -> None:
    """The same seed and the same actions give the same observations and rewards."""
    runs = []
    for _ in range(2):
        with make_env() as env:
            runs.append(rollout(env, steps, seed=7, check=False))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a[0]["obs"], b[0]["obs"])
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[2] | a[3], b[2] | b[3])


def run_until_done(env: envs.MultiAgentVecEnv, max_steps: int, seed: int = 0):
    """Step with random actions until some env ends; return (previous batch, step output)."""
    rng = np.random.default_rng(seed)
    batch = env.reset(seed=seed)
    for _ in range(max_steps):
        out = env.step(random_actions(env, batch, rng))
        if (out[2] | out[3]).any():
            return batch, out
        batch = out[0]
    raise AssertionError(f"no episode ended within {max_steps} steps")
