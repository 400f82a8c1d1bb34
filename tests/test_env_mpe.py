"""The particle worlds' jax backend (JaxMARL's MPE, jitted) against the reference, mpe2.

Equivalence, three ways: the same sizes and spaces; from the same state (an mpe2 world set to a
jax env's positions, velocities, messages and goals) the same actions give the same
observations, state and per-agent rewards; the same random-policy return distribution.
Every jax env of this file uses batch size E (or R for the return distributions), so each
task compiles once per process.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest

import envs
import envs.mpe
from benchmark.random_policy import random_episodes
from envs import random_actions
from tests.contract import assert_same_trajectories, rollout, run_until_done

# find_spec, not importorskip: importing jaxmarl outside envs prints and resets sys.stdout
pytestmark = pytest.mark.skipif(
    find_spec("jaxmarl") is None or find_spec("mpe2") is None, reason="needs jaxmarl and mpe2"
)
E = 4  # batch size of every jax env but the return distributions'
R = 200  # episodes per backend in the return distributions


def jax_env(env_id, num_envs=E, seed=0, **options):
    return envs.make(env_id, num_envs=num_envs, seed=seed, backend="jax", **options)


@pytest.mark.parametrize("backend", envs.BACKENDS["mpe"])
@pytest.mark.parametrize("env_id", ["mpe-spread", "mpe-speaker-listener-continuous", "mpe-reference"])
def test_contract(env_id, backend):
    with envs.make(env_id, num_envs=E, seed=0, backend=backend) as env:
        rollout(env, steps=30)  # through one auto-reset


def test_jax_seeding_gives_same_trajectories_and_truncates_after_25_steps():
    assert_same_trajectories(lambda: jax_env("mpe-spread", seed=3), steps=30)
    with jax_env("mpe-spread") as env:
        before, (batch, reward, terminated, truncated, info) = run_until_done(env, 30)
        assert truncated.all() and not terminated.any()
        np.testing.assert_array_equal(info["episode"]["length"], [25] * E)
        assert not np.allclose(info["final_obs"], batch["obs"])  # the next episode's first obs
        assert np.abs(info["final_obs"] - before["obs"]).max() < 1.0  # one step on from the last obs
        np.testing.assert_allclose(reward, info["agent_rewards"].mean(1), rtol=1e-6)


@pytest.mark.parametrize("env_id", envs.MPE_IDS)
def test_backends_have_the_same_sizes_and_spaces(env_id):
    with jax_env(env_id) as fast, envs.make(env_id, num_envs=1, backend="mpe2") as ref:
        for name in ("n_agents", "obs_dims", "obs_dim", "state_dim", "discrete", "n_actions", "act_dim", "act_dims",
                     "episode_limit"):  # fmt: skip
            assert getattr(fast, name) == getattr(ref, name), name
        assert fast.observation_spaces == ref.observation_spaces
        assert fast.action_spaces == ref.action_spaces
        if not fast.discrete:
            np.testing.assert_array_equal(fast.act_low, ref.act_low)
            np.testing.assert_array_equal(fast.act_high, ref.act_high)


def _actions(env, batch, rng):
    """Random actions; continuous ones partly outside [0, 1], so that the clipping is compared too."""
    if env.discrete:
        return random_actions(env, batch, rng)
    return rng.uniform(-0.25, 1.25, (env.num_envs, env.n_agents, env.act_dim)).astype(np.float32)


@pytest.mark.parametrize("env_id", envs.MPE_IDS)
def test_same_state_and_actions_give_the_same_step(env_id):
    """Along a jax trajectory, every step of every env is redone in mpe2 from the same state."""
    rng = np.random.default_rng(0)
    ref = envs.mpe._make_parallel_env(env_id, envs.mpe.EPISODE_LIMIT, None)
    raw = ref.unwrapped
    with jax_env(env_id) as env:
        batch = env.reset()
        for t in range(envs.mpe.EPISODE_LIMIT):
            state = env.c.jax.device_get(env._state)
            actions = _actions(env, batch, rng)
            out, reward, _, truncated, info = env.step(actions)
            assert truncated.all() == (t == envs.mpe.EPISODE_LIMIT - 1)
            for e in range(E):
                ref.reset(seed=t)
                s = env.c.jax.tree.map(lambda x, e=e: x[e], state)
                envs.mpe.set_world(ref, env_id, s.p_pos, s.p_vel, s.c, s.goal)
                before = np.concatenate([raw.observe(a) for a in raw.agents])
                np.testing.assert_allclose(batch["state"][e], before, atol=1e-5)  # the same state, observed
                act = {a: actions[e, i, : env.act_dims[i]] if not env.discrete else int(actions[e, i])
                       for i, a in enumerate(ref.agents)}  # fmt: skip
                obs, rewards, *_ = ref.step(act)
                for i, a in enumerate(ref.possible_agents):
                    d = env.obs_dims[i]
                    np.testing.assert_allclose(info["final_obs"][e, i, :d], obs[a], atol=1e-5, err_msg=f"t={t} {a}")
                    np.testing.assert_allclose(info["agent_rewards"][e, i], rewards[a], atol=1e-5, err_msg=a)
                np.testing.assert_allclose(reward[e], np.mean(list(rewards.values())), atol=1e-5)
                np.testing.assert_allclose(info["final_state"][e], np.concatenate(list(obs.values())), atol=1e-5)
            batch = out


@pytest.mark.parametrize("env_id", ["mpe-spread", "mpe-speaker-listener-continuous", "mpe-reference"])
def test_random_policy_returns_have_the_same_distribution(env_id):
    a = random_episodes(env_id, R, seed=1, num_envs=R, backend="jax")["return"]  # one batch: one compilation
    b = random_episodes(env_id, R, seed=1, num_envs=20, backend="mpe2")["return"]
    se = np.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 3 * se, (a.mean(), b.mean(), se)
    assert 0.8 < a.std() / b.std() < 1.25, (a.std(), b.std())
    # the median and quartiles agree within noise too (a few standard errors of the mean)
    np.testing.assert_allclose(np.percentile(a, [25, 50, 75]), np.percentile(b, [25, 50, 75]), atol=4 * se)


def test_jax_render_draws_env_0_with_mpe2():
    with envs.make("mpe-speaker-listener", num_envs=E, seed=0, backend="jax", render_mode="rgb_array") as env:
        batch = env.reset()
        first = env.render()
        env.step(random_actions(env, batch, np.random.default_rng(0)))
        second = env.render()
    assert first.shape == (700, 700, 3) and first.dtype == np.uint8
    assert (first != 255).any() and not np.array_equal(first, second)  # something drawn, and it moved
    assert env.render_fps == 10


def test_backend_options_are_checked():
    with pytest.raises(ValueError, match=r"backend must be one of \('jax', 'mpe2'\)"):
        envs.make("mpe-spread", backend="mujoco")
    with pytest.raises(ValueError, match="applies to backend='mpe2' only"):
        envs.make("mpe-spread", backend="jax", vectorization="async")
    with pytest.raises(ValueError, match="render_mode='rgb_array'"), jax_env("mpe-spread") as env:
        env.reset()
        env.render()
