"""Contract tests of the traffic-signal-control family (envs/tsc.py): short episodes, few steps.

Every make() starts one SUMO worker process per env (a few seconds each), so the tests share
as few envs as they can.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

import envs
import envs.tsc
from envs import MissingDependencyError, random_actions

if importlib.util.find_spec("sumo_rl") is None or importlib.util.find_spec("libsumo") is None:
    pytest.skip("sumo-rl / libsumo not installed", allow_module_level=True)

STEPS = 5  # num_seconds=25 with delta_time=5: episodes end (truncated) after 5 steps


def check_batch(env, batch):
    E, N = env.num_envs, env.n_agents
    assert batch["obs"].shape == (E, N, env.obs_dim) and batch["obs"].dtype == np.float32
    assert batch["state"].shape == (E, env.state_dim) and batch["state"].dtype == np.float32
    assert batch["alive"].shape == (E, N) and batch["alive"].dtype == bool and batch["alive"].all()
    assert batch["avail"].shape == (E, N, env.n_actions) and batch["avail"].dtype == bool
    # padding: obs beyond each light's size are zero, actions beyond its phases unavailable
    for i in range(N):
        assert (batch["obs"][:, i, env.obs_dims[i]:] == 0).all()
        assert batch["avail"][:, i, : env.act_dims[i]].all()
        assert not batch["avail"][:, i, env.act_dims[i]:].any()
    # the state is the concatenation of the lights' observations
    parts = [batch["obs"][:, i, : env.obs_dims[i]] for i in range(N)]
    np.testing.assert_array_equal(batch["state"], np.concatenate(parts, axis=1))


def run_episode(env, seed_actions=0):
    """Reset, then STEPS random steps; returns the list of (batch, reward, term, trunc, info)."""
    rng = np.random.default_rng(seed_actions)
    batch = env.reset()
    out = [(batch, None, None, None, None)]
    for _ in range(STEPS):
        batch, reward, terminated, truncated, info = env.step(random_actions(env, batch, rng))
        out.append((batch, reward, terminated, truncated, info))
    return out


@pytest.mark.parametrize(
    "env_id, n_agents, obs_dims, act_dims",
    [
        ("tsc-4x4", 16, [33] * 16, [8] * 16),
        ("tsc-cologne8", 8, [17, 11, 10, 17, 12, 7, 12, 13], [4, 2, 3, 4, 3, 2, 3, 4]),
    ],
)
def test_contract_and_masks(env_id, n_agents, obs_dims, act_dims):
    with envs.make(env_id, num_envs=1, seed=0, num_seconds=5 * STEPS) as env:
        assert envs.family(env_id) == "tsc"
        assert env.discrete and env.n_agents == n_agents
        assert env.obs_dims == obs_dims and env.act_dims == act_dims
        assert env.obs_dim == max(obs_dims) and env.n_actions == max(act_dims)
        assert env.state_dim == sum(obs_dims) and env.episode_limit == STEPS
        assert "waiting_time" in env.metric_names
        batch = env.reset()
        check_batch(env, batch)
        if env_id == "tsc-cologne8":
            # light 1 has 2 green phases: action 2 is padding (unavailable) and must be refused
            bad = np.zeros((1, n_agents), np.int64)
            bad[0, 1] = 2
            with pytest.raises(ValueError):
                env.step(bad)
        rng = np.random.default_rng(0)
        for _ in range(2):
            batch, reward, terminated, truncated, info = env.step(random_actions(env, batch, rng))
            check_batch(env, batch)
            assert reward.shape == (1,) and reward.dtype == np.float32
            assert info["agent_rewards"].shape == (1, n_agents)
            np.testing.assert_allclose(reward, info["agent_rewards"].sum(1), rtol=1e-5, atol=1e-6)


def test_2x2_episode_seeding_two_envs_and_close():
    """Two batches in one process: same seed -> same trajectories; truncation; metrics; close."""
    env_a = envs.make("tsc-2x2", num_envs=2, seed=3, num_seconds=5 * STEPS)
    env_b = envs.make("tsc-2x2", num_envs=2, seed=3, num_seconds=5 * STEPS)
    try:
        # no simulation in this process: libsumo allows one per process and it holds two batches
        assert "libsumo" not in sys.modules and "sumo_rl" not in sys.modules
        assert env_a.n_agents == 4 and env_a.obs_dims == [21] * 4 and env_a.act_dims == [4] * 4
        assert env_a.state_dim == 84 and env_a.episode_limit == STEPS
        # step the two batches alternately (each has its own SUMO worker processes)
        rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
        traj_a, traj_b = [env_a.reset()], [env_b.reset()]
        first_obs = traj_a[0]["obs"].copy()
        light_returns = np.zeros((2, 4))
        for t in range(STEPS):
            step_a = env_a.step(random_actions(env_a, traj_a[-1], rng_a))
            step_b = env_b.step(random_actions(env_b, traj_b[-1], rng_b))
            batch, reward, terminated, truncated, info = step_a
            np.testing.assert_array_equal(batch["obs"], step_b[0]["obs"])
            np.testing.assert_array_equal(reward, step_b[1])
            np.testing.assert_array_equal(info["final_obs"], step_b[4]["final_obs"])
            traj_a.append(batch)
            traj_b.append(step_b[0])
            check_batch(env_a, batch)
            np.testing.assert_allclose(reward, info["agent_rewards"].sum(1), rtol=1e-5, atol=1e-6)
            light_returns += info["agent_rewards"]
            assert not terminated.any()  # traffic never terminates
            if t < STEPS - 1:
                assert not truncated.any() and "episode" not in info
                np.testing.assert_array_equal(info["final_obs"], batch["obs"])
        # the last step truncates every env and auto-resets it
        assert truncated.all()
        # diff-waiting-time telescopes from 0: a light's return is minus the waiting still on its lanes
        assert (light_returns <= 1e-6).all() and (light_returns < 0).any()
        ep = info["episode"]
        np.testing.assert_array_equal(ep["length"], [STEPS, STEPS])
        for name in ("waiting_time", "mean_speed", "stopped"):
            assert name in ep and np.isfinite(ep[name]).all() and (ep[name] >= 0).all()
        assert (ep["mean_speed"] > 0).all()  # vehicles are moving
        # final obs: the finished episode's last obs (time has passed), not the new first obs
        assert not np.array_equal(info["final_obs"], batch["obs"])
        assert not np.array_equal(info["final_obs"], first_obs)
        assert info["final_state"].shape == (2, env_a.state_dim)
        # seed + e: the two envs of a batch see different traffic
        assert not np.array_equal(traj_a[-2]["obs"][0], traj_a[-2]["obs"][1])
        # a new seed changes the trajectories
        rng = np.random.default_rng(0)
        batch = env_b.reset(seed=100)
        for _ in range(STEPS - 1):
            batch, *_ = env_b.step(random_actions(env_b, batch, rng))
        assert not np.array_equal(batch["obs"], traj_a[-2]["obs"])
    finally:
        processes = env_a.vec.processes + env_b.vec.processes
        env_a.close()
        env_b.close()
    assert not any(p.is_alive() for p in processes)


def test_fixed_time_baseline():
    """fixed_ts: SUMO's own programme; actions are still validated but ignored."""
    with envs.make("tsc-2x2", num_envs=1, seed=0, num_seconds=5 * STEPS, fixed_ts=True) as env:
        batch = env.reset()
        rng = np.random.default_rng(0)
        for _ in range(STEPS):
            batch, reward, terminated, truncated, info = env.step(random_actions(env, batch, rng))
        assert truncated.all() and not terminated.any()
        assert np.isfinite(info["episode"]["waiting_time"]).all()


def test_bad_options_and_missing_package(monkeypatch):
    with pytest.raises(ValueError, match="async"):
        envs.make("tsc-2x2", vectorization="sync")
    with pytest.raises(ValueError, match="delta_time"):
        envs.make("tsc-2x2", delta_time=2)
    with pytest.raises(ValueError, match="unknown option"):
        envs.make("tsc-2x2", no_such_option=1)
    # a backend module that is not installed: the error names the pip command
    monkeypatch.setitem(envs.tsc.PACKAGES, "sumo_rl_not_installed_here", "sumo-rl")
    with pytest.raises(MissingDependencyError, match="pip install sumo-rl"):
        envs.make("tsc-2x2")
