"""Contract tests for the in-process families (toy games, Multi-Agent MuJoCo, MPE) and the
errors every family shares. Traffic and SMAX have their own files (slower backends)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import envs
from tests.contract import assert_same_trajectories, check_sizes, rollout, run_until_done

FAST_IDS = envs.TOY_IDS + envs.MAMUJOCO_IDS + envs.MPE_IDS


@pytest.mark.parametrize("env_id", FAST_IDS)
def test_contract(env_id):
    with envs.make(env_id, num_envs=2, seed=0) as env:
        rollout(env, steps=5)


@pytest.mark.parametrize("env_id", ["matrix-climbing", "product-game", "ant-2x4", "halfcheetah-6x1", "mpe-spread"])
def test_seeding_gives_same_trajectories(env_id):
    assert_same_trajectories(lambda: envs.make(env_id, num_envs=2, seed=3), steps=10)


def test_different_seeds_give_different_starts():
    with envs.make("mpe-spread", num_envs=2, seed=0) as env:
        batch = env.reset()
        # env e is seeded with seed + e
        assert not np.array_equal(batch["obs"][0], batch["obs"][1])


def test_ids_and_families():
    ids = envs.ids()
    assert len(ids) == len(set(ids))
    for required in ["matrix-climbing", "product-game", "tsc-cologne8", "ant-8x1", "humanoid-9-8", "smax-3m",
                     "smax-2s3z", "mpe-spread-continuous"]:  # fmt: skip
        assert required in ids
    assert envs.family("walker-6x1") == "mamujoco"
    assert envs.family("smac-3m") == "smac"


# --------------------------------------------------------------------------- the games
def test_matrix_game_payoffs():
    with envs.make("matrix-climbing", num_envs=3) as env:
        _, reward, terminated, truncated, info = env.step(np.array([[0, 0], [0, 1], [1, 1]]))
        np.testing.assert_array_equal(reward, [11, -30, 7])
        assert terminated.all() and not truncated.any()
        np.testing.assert_array_equal(info["episode"]["return"], [11, -30, 7])
    with envs.make("matrix-penalty", num_envs=3, penalty=-50) as env:
        _, reward, *_ = env.step(np.array([[0, 2], [0, 0], [1, 1]]))
        np.testing.assert_array_equal(reward, [10, -50, 2])


def test_product_game_reward_and_clipping():
    with envs.make("product-game", num_envs=3) as env:
        actions = np.array([[[2.0], [2.0]], [[-1.0], [0.5]], [[3.0], [-1.0]]], np.float32)
        _, reward, terminated, *_ = env.step(actions)
        # 2*2 = 4; -1*0.5 = -0.5; clip(3)=2, 2*-1 = -2
        np.testing.assert_allclose(reward, [4.0, -0.5, -2.0])
        assert terminated.all()


# ------------------------------------------------------------ auto-reset and final obs
def test_mpe_truncates_after_25_steps_with_final_obs():
    with envs.make("mpe-spread", num_envs=2, seed=0) as env:
        before, (batch, reward, terminated, truncated, info) = run_until_done(env, 30)
        assert truncated.all() and not terminated.any()
        np.testing.assert_array_equal(info["episode"]["length"], [25, 25])
        # the final obs belongs to the old episode, the batch to the new one
        assert not np.allclose(info["final_obs"], batch["obs"])
        # the final obs is one step on from the previous obs (agents moved a little)
        assert np.abs(info["final_obs"] - before["obs"]).max() < 1.0
        # team reward is the mean of the agents' rewards
        np.testing.assert_allclose(reward, info["agent_rewards"].mean(1), rtol=1e-5)


def test_mamujoco_fall_terminates_with_final_state():
    with envs.make("hopper-3x1", num_envs=2, seed=0) as env:
        _, (batch, _, terminated, truncated, info) = run_until_done(env, 200)
        assert terminated.any() and not truncated.any()
        row = np.flatnonzero(terminated)[0]
        assert not np.allclose(info["final_state"][row], batch["state"][row])
        assert info["episode"]["length"][row] < 200


def test_heterogeneous_padding():
    with envs.make("halfcheetah-6x1", num_envs=1) as env:
        assert env.obs_dims == [9, 9, 8, 9, 9, 8]
        batch = env.reset(seed=0)
        assert (batch["obs"][0, 2, 8:] == 0).all()
    with envs.make("humanoid-9-8", num_envs=1) as env:
        assert env.obs_dims == [242, 170] and env.act_dims == [9, 8]
        # the padded action dimension of agent 1 is ignored, whatever its value
        assert env.act_low[1, 8] == -1 and env.act_high[1, 8] == 1
    with envs.make("mpe-speaker-listener", num_envs=1) as env:
        assert env.obs_dims == [3, 11] and env.act_dims == [3, 5]
        batch = env.reset(seed=0)
        assert batch["avail"][0, 0].tolist() == [True, True, True, False, False]


# ------------------------------------------------------------------------------ errors
def test_unknown_id_lists_valid_ids():
    with pytest.raises(ValueError, match="unknown env id 'ant-3x3'.*ant-2x4.*mpe-spread"):
        envs.make("ant-3x3")


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="unknown option"):
        envs.make("mpe-spread", colour="red")


def test_backend_option_only_where_a_family_has_several():
    assert all(len(b) >= 1 for b in envs.BACKENDS.values()) and set(envs.FAMILIES) <= set(envs.BACKENDS)
    several = r"mpe \(jax, mpe2\), lbf \(lbforaging, jax\), rware \(rware, jax\)"
    with pytest.raises(ValueError, match=r"tsc-2x2 has one backend \(sumo-rl\).*" + several):
        envs.make("tsc-2x2", backend="jax")
    with pytest.raises(ValueError, match=r"matrix-climbing has one backend \(numpy\), got backend='jax'"):
        envs.make("matrix-climbing", backend="jax")
    with envs.make("matrix-climbing", backend="numpy") as env:  # naming the only backend is fine
        assert env.num_envs == 1


def test_bad_actions_are_refused():
    with envs.make("mpe-speaker-listener", num_envs=2) as env:
        env.reset(seed=0)
        with pytest.raises(ValueError, match=r"shape \(num_envs, n_agents\) = \(2, 2\)"):
            env.step(np.zeros((2, 3), np.int64))
        with pytest.raises(ValueError, match="must be integers"):
            env.step(np.zeros((2, 2), np.float32))
        with pytest.raises(ValueError, match=r"action 4 of agent 0 .* out of range \[0, 3\)"):
            env.step(np.array([[0, 0], [4, 0]]))
    with envs.make("product-game", num_envs=2) as env:
        with pytest.raises(ValueError, match=r"shape \(num_envs, n_agents, act_dim\)"):
            env.step(np.zeros((2, 2), np.float32))


def test_unavailable_action_is_refused():
    with envs.make("matrix-climbing", num_envs=1) as env:
        avail = np.array([[[True, False, True], [True, True, True]]])
        env.check_actions(np.array([[0, 1]]), avail)
        with pytest.raises(ValueError, match="action 1 of agent 0 in env 0 is not available"):
            env.check_actions(np.array([[1, 1]]), avail)


def test_missing_package_names_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # makes the import fail
    with pytest.raises(envs.MissingDependencyError, match="pip install gymnasium-robotics"):
        envs.make("ant-2x4")


def test_sizes_of_ant_factorizations():
    for env_id, n in [("ant-2x4", 2), ("ant-4x2", 4), ("ant-8x1", 8)]:
        with envs.make(env_id) as env:
            check_sizes(env)
            assert env.n_agents == n and sum(env.act_dims) == 8


def test_memory_cue_rewards_only_the_remembered_cue():
    """The cue is visible at the first step only; the last step pays the fraction of agents that name it."""
    with envs.make("memory-cue", num_envs=4, seed=3, length=3) as env:
        batch = env.reset()
        cue = batch["obs"][:, 0, :2].argmax(1)
        assert (batch["obs"][:, :, :2].sum(-1) == 1).all() and (batch["obs"][:, :, 2] == 1).all()
        batch, reward, terminated, _, _ = env.step(np.zeros((4, 2), np.int64))
        assert (batch["obs"][:, :, :2] == 0).all() and (reward == 0).all() and not terminated.any()
        batch, *_ = env.step(np.zeros((4, 2), np.int64))
        actions = np.stack([cue, 1 - cue], axis=1)  # agent 0 right, agent 1 wrong
        actions[0] = cue[0]  # env 0: both right
        batch, reward, terminated, _, info = env.step(actions)
        np.testing.assert_allclose(reward, [1.0, 0.5, 0.5, 0.5])
        assert terminated.all() and info["episode"]["length"].tolist() == [3] * 4
        assert (batch["obs"][:, 0, 2] == 1).all() and (batch["obs"][:, 0, :2].sum(-1) == 1).all()  # new episodes


def test_memory_cue_bad_length():
    with pytest.raises(ValueError, match="length must be an int >= 2"):
        envs.make("memory-cue", length=1)
    with pytest.raises(ValueError, match="unknown option"):
        envs.make("memory-cue", lenght=3)


def test_parse_options():
    assert envs.parse_options(["agent_obsk=0", "backend=mpe2", "flag=True", "x=1.5"]) == {
        "agent_obsk": 0, "backend": "mpe2", "flag": True, "x": 1.5,
    }  # fmt: skip
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        envs.parse_options(["agent_obsk"])
