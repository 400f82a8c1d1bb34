"""Multi-Agent MuJoCo's fast path (backend="mujoco") against the reference (gymnasium-robotics'
mamujoco_v1), and HARL's global observation option. The contract itself is tested in test_envs.py."""

from __future__ import annotations

import numpy as np
import pytest

import envs
import envs.mamujoco
from envs import random_actions
from envs.mamujoco import standardise

LIMIT = 40  # short episodes, so that a few hundred steps see truncations as well as falls


def run_both(env_id: str, steps: int, num_envs: int = 3, seed: int = 5, **options):
    """The same random actions through both backends; yields (fast, reference) step outputs."""
    rng = np.random.default_rng(seed)
    with (
        envs.make(env_id, num_envs=num_envs, seed=seed, backend="mujoco", **options) as fast,
        envs.make(env_id, num_envs=num_envs, seed=seed, backend="gymnasium-robotics", **options) as ref,
    ):
        assert (fast.obs_dims, fast.act_dims, fast.state_dim) == (ref.obs_dims, ref.act_dims, ref.state_dim)
        np.testing.assert_array_equal(fast.act_low, ref.act_low)
        np.testing.assert_array_equal(fast.act_high, ref.act_high)
        batch = fast.reset()
        yield batch, ref.reset()
        for _ in range(steps):
            actions = random_actions(fast, batch, rng)
            out = fast.step(actions)
            yield out, ref.step(actions)
            batch = out[0]


@pytest.mark.parametrize("env_id", envs.MAMUJOCO_IDS)
def test_fast_path_matches_reference(env_id, monkeypatch):
    """Observations, state, reward, terminated, truncated, final obs/state and episode statistics
    agree with gymnasium-robotics for every id (the reset states agree too: the same seeding)."""
    monkeypatch.setattr(envs.mamujoco, "EPISODE_LIMIT", LIMIT)
    outs = run_both(env_id, steps=100)
    fast, ref = next(outs)
    for key in ("obs", "state"):
        np.testing.assert_allclose(fast[key], ref[key], rtol=1e-6, atol=1e-6, err_msg=f"reset {key}")
    terminations = truncations = 0
    for t, (fast, ref) in enumerate(outs):
        (fb, fr, fterm, ftrunc, finfo), (rb, rr, rterm, rtrunc, rinfo) = fast, ref
        for key in ("obs", "state", "alive"):
            np.testing.assert_allclose(fb[key], rb[key], rtol=1e-6, atol=1e-6, err_msg=f"step {t}: {key}")
            np.testing.assert_allclose(finfo[f"final_{key}"], rinfo[f"final_{key}"], 1e-6, 1e-6, err_msg=f"step {t}")
        np.testing.assert_allclose(fr, rr, rtol=1e-5, atol=1e-5, err_msg=f"step {t}: reward")
        np.testing.assert_allclose(finfo["agent_rewards"], rinfo["agent_rewards"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(fterm, rterm, err_msg=f"step {t}: terminated")
        np.testing.assert_array_equal(ftrunc, rtrunc, err_msg=f"step {t}: truncated")
        assert ("episode" in finfo) == ("episode" in rinfo)
        if "episode" in finfo:
            done = fterm | ftrunc
            for key in ("return", "length"):
                np.testing.assert_allclose(finfo["episode"][key][done], rinfo["episode"][key][done], rtol=1e-5)
        terminations += fterm.sum()
        truncations += ftrunc.sum()
    # 100 steps of 40-step episodes: every env was truncated at least once unless it fell first
    assert truncations + terminations >= 3
    if env_id.startswith(("hopper", "walker", "humanoid")):  # random actions topple these within 40 steps
        assert terminations > 0


@pytest.mark.parametrize("agent_obsk", [0, 2])
def test_fast_path_matches_reference_at_other_depths(agent_obsk, monkeypatch):
    monkeypatch.setattr(envs.mamujoco, "EPISODE_LIMIT", LIMIT)
    for fast, ref in run_both("ant-4x2", steps=30, agent_obsk=agent_obsk):
        fb, rb = (fast, ref) if isinstance(fast, dict) else (fast[0], ref[0])
        np.testing.assert_allclose(fb["obs"], rb["obs"], rtol=1e-6, atol=1e-6)


def test_fast_path_clips_as_the_reference():
    """Ant's contact forces are clipped to [-1, 1] in the state, Walker's velocities to [-10, 10]:
    the layouts read off gymnasium-robotics say so (hand-checked against gymnasium's v5 _get_obs)."""
    from envs.mamujoco_fast import layout_of

    ant = layout_of("ant-2x4", 1)
    n = 2 * max(ant.obs_dims)
    state_low, state_high = ant.low[n:], ant.high[n:]
    # the state: qpos[2:] (13), qvel (14) unclipped, then 13 bodies x 6 contact forces in [-1, 1]
    assert len(state_low) == 13 + 14 + 78
    assert np.isinf(state_low[:27]).all() and (state_low[27:] == -1).all() and (state_high[27:] == 1).all()
    walker = layout_of("walker-2x3", 1)
    n = 2 * max(walker.obs_dims)
    # qpos[1:] (8) unclipped, qvel (9) in [-10, 10]
    assert np.isinf(walker.high[n : n + 8]).all() and (walker.high[n + 8 :] == 10).all()


def test_same_seed_same_trajectories_and_reset_noise():
    def run(seed):
        with envs.make("hopper-3x1", num_envs=2, seed=seed) as env:
            rng = np.random.default_rng(0)
            batch = env.reset()
            out = [batch["state"]]
            for _ in range(60):
                batch, reward, *_ = env.step(random_actions(env, batch, rng))
                out += [batch["state"], reward]
            return out

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    # Hopper's reset noise is uniform in [-0.005, 0.005] around the initial pose
    with envs.make("hopper-3x1", num_envs=64, seed=0) as env:
        state = env.reset()["state"]
        init = np.concatenate([env.init_qpos[1:], env.init_qvel])
        assert 0 < np.abs(state - init).max() <= 0.005 + 1e-6


def test_backend_and_observation_options_are_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        envs.make("ant-2x4", backend="jax")
    with pytest.raises(ValueError, match="observation must be one of"):
        envs.make("ant-2x4", observation="full")
    with pytest.raises(ValueError, match="agent_obsk must be an int >= 0"):
        envs.make("ant-2x4", agent_obsk=-1)
    with pytest.raises(ValueError, match="needs backend='gymnasium-robotics'"):
        envs.make("ant-2x4", vectorization="async")
    with envs.make("ant-2x4") as env:
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros((1, 2, 4), np.float32))


# ------------------------------------------------------------- HARL's observation setting
def test_standardise_by_hand():
    # mean 0.5, population standard deviation 0.5
    np.testing.assert_allclose(standardise(np.array([0.0, 0.0, 1.0, 1.0])), [-1, -1, 1, 1])
    # [1, 2, 3]: mean 2, std sqrt(2/3)
    np.testing.assert_allclose(standardise(np.array([[1.0, 2.0, 3.0]])), [[-1.2247449, 0.0, 1.2247449]], rtol=1e-6)


@pytest.mark.parametrize("backend", ["mujoco", "gymnasium-robotics"])
def test_global_observation_is_standardised_state_and_id(backend):
    """observation="global": agent i sees standardise([state, onehot(i)]), the critic standardise(state)."""
    with (
        envs.make("walker-2x3", num_envs=2, seed=1, backend=backend) as local,
        envs.make("walker-2x3", num_envs=2, seed=1, backend=backend, observation="global") as glob,
    ):
        S, N = local.state_dim, 2
        assert glob.obs_dims == [S + N, S + N] and glob.state_dim == S and glob.act_dims == local.act_dims
        rng = np.random.default_rng(0)
        lb, gb = local.reset(), glob.reset()
        for _ in range(3):
            actions = random_actions(local, lb, rng)
            lb, gb = local.step(actions)[0], glob.step(actions)[0]
        state = lb["state"].astype(np.float64)
        for i in range(N):
            x = np.concatenate([state, np.eye(N)[[i, i]]], 1)
            expected = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
            np.testing.assert_allclose(gb["obs"][:, i], expected, rtol=1e-5, atol=1e-5)
        # the two agents' views differ only in the id entries, where agent i's is the larger
        same = gb["obs"][:, 0, :S] == gb["obs"][:, 1, :S]
        assert same.all() and (gb["obs"][:, 0, S] > gb["obs"][:, 1, S]).all()
        np.testing.assert_allclose(gb["obs"].mean(-1), 0, atol=1e-5)
        np.testing.assert_allclose(gb["obs"].std(-1), 1, atol=1e-5)
        np.testing.assert_allclose(gb["state"], standardise(state), rtol=1e-5, atol=1e-6)


def test_global_observation_final_obs_on_auto_reset(monkeypatch):
    monkeypatch.setattr(envs.mamujoco, "EPISODE_LIMIT", 5)
    with envs.make("halfcheetah-6x1", num_envs=2, seed=0, observation="global") as env:
        batch = env.reset()
        for _ in range(5):
            batch, _, terminated, truncated, info = env.step(np.zeros((2, 6, 1), np.float32))
        assert truncated.all() and not terminated.any()
        # the final obs is the old episode's, standardised the same way; the batch is the new episode's
        np.testing.assert_allclose(info["final_obs"].mean(-1), 0, atol=1e-5)
        np.testing.assert_allclose(info["final_state"].std(-1), 1, atol=1e-5)
        assert not np.allclose(info["final_obs"], batch["obs"])


def test_render_matches_reference():
    frames = []
    for backend in ("mujoco", "gymnasium-robotics"):
        with envs.make("hopper-3x1", num_envs=1, seed=0, backend=backend, render_mode="rgb_array") as env:
            env.reset()
            env.step(np.full((1, 3, 1), 0.5, np.float32))
            try:
                frames.append(env.render())
            except Exception as e:  # no OpenGL (EGL) on this machine
                pytest.skip(f"MuJoCo cannot render here: {e}")
    assert frames[0].shape == (480, 480, 3) and frames[0].std() > 0
    np.testing.assert_array_equal(frames[0], frames[1])
