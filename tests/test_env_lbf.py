"""Contract tests for Level-Based Foraging (`lbf-*`) and Multi-Robot Warehouse (`rware-*`), and
hand-computed rewards, masks and episode ends."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import envs
from tests.contract import assert_same_trajectories, rollout, run_until_done

pytest.importorskip("lbforaging")
pytest.importorskip("rware")


def inner(env: envs.MultiAgentVecEnv, e: int = 0):
    """The lbforaging / rware env inside env e of a batch (sync vectorisation)."""
    return env.vec.envs[e].env.env


@pytest.mark.parametrize("env_id", envs.LBF_IDS + envs.RWARE_IDS)
def test_contract(env_id):
    with envs.make(env_id, num_envs=2, seed=0) as env:
        rollout(env, steps=5)


@pytest.mark.parametrize("env_id", ["lbf-10x10-3p-3f", "rware-tiny-2ag"])
def test_seeding_gives_same_trajectories(env_id):
    assert_same_trajectories(lambda: envs.make(env_id, num_envs=2, seed=3), steps=20)


def test_episode_limits_are_epymarls():
    with envs.make("lbf-8x8-2p-2f-coop") as lbf, envs.make("rware-tiny-2ag") as rware:
        assert (lbf.episode_limit, rware.episode_limit) == (50, 500)


# ---------------------------------------------------------------------------- LBF
def test_lbf_masks_are_the_valid_moves():
    """On a full-sight task the observation holds every position: a move is valid when it stays on
    the grid and does not enter food, LOAD when a food is next to the agent, NONE always."""
    with envs.make("lbf-8x8-2p-3f", num_envs=4, seed=1) as env:
        for batch, *_ in [(env.reset(),)] + rollout(env, steps=30, seed=1, check=False):
            for obs, avail in zip(batch["obs"].reshape(-1, env.obs_dim), batch["avail"].reshape(-1, 6)):
                foods = {(int(r), int(c)) for r, c, level in obs[:9].reshape(3, 3) if level > 0}
                row, col = obs[9:11]
                moves = [(row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)]  # N S W E
                expected = [True] + [0 <= r < 8 and 0 <= c < 8 and (r, c) not in foods for r, c in moves]
                expected.append(any((r, c) in foods for r, c in moves))
                np.testing.assert_array_equal(avail, expected)


def test_lbf_without_masks_offers_every_action():
    with envs.make("lbf-8x8-2p-2f-coop", num_envs=2, seed=0, action_masks=False) as env:
        assert env.reset()["avail"].all()


def place(foraging, food: dict, players: list) -> None:
    """Set an lbforaging env's field to `food` {(row, col): level} and its players to (row, col, level)."""
    foraging.field[:] = 0
    for (row, col), level in food.items():
        foraging.field[row, col] = level
    foraging._food_spawned = foraging.field.sum()
    for player, (row, col, level) in zip(foraging.players, players):
        player.position, player.level = (row, col), level
    foraging._gen_valid_moves()


def test_lbf_reward_is_normalised_level_share_and_all_food_terminates():
    with envs.make("lbf-8x8-2p-2f-coop", num_envs=1, seed=0, action_masks=False) as env:
        env.reset()
        # one food of level 3 between a level-1 and a level-2 agent; both load
        place(inner(env), {(3, 3): 3}, [(3, 2, 1), (3, 4, 2)])
        _, reward, terminated, truncated, info = env.step(np.array([[5, 5]]))
        # agent reward = level * food level / (sum of loading levels * all food spawned) = l * 3 / (3 * 3)
        np.testing.assert_allclose(info["agent_rewards"], [[1 / 3, 2 / 3]], rtol=1e-6)
        np.testing.assert_allclose(reward, [1.0], rtol=1e-6)  # the team reward is their sum
        assert terminated.all() and not truncated.any()
        np.testing.assert_allclose(info["episode"]["return"], [1.0], rtol=1e-6)
        np.testing.assert_array_equal(info["episode"]["length"], [1])


def test_lbf_load_fails_below_the_food_level():
    with envs.make("lbf-8x8-2p-2f-coop", num_envs=1, seed=0, action_masks=False) as env:
        env.reset()
        place(inner(env), {(3, 3): 3, (6, 6): 1}, [(3, 2, 1), (3, 4, 2)])
        _, reward, terminated, truncated, info = env.step(np.array([[5, 0]]))  # only the level-1 agent loads
        np.testing.assert_array_equal(reward, [0.0])
        assert not (terminated | truncated).any()
        # now both load: the level-3 food is 3 of the 4 spawned levels; the other food stays
        _, reward, terminated, _, info = env.step(np.array([[5, 5]]))
        np.testing.assert_allclose(info["agent_rewards"], [[1 * 3 / (3 * 4), 2 * 3 / (3 * 4)]], rtol=1e-6)
        assert not terminated.any()


def test_lbf_truncates_after_50_steps_with_final_obs():
    with envs.make("lbf-15x15-4p-5f", num_envs=2, seed=0) as env:
        before, (batch, _, terminated, truncated, info) = run_until_done(env, 60)
        # random agents rarely load all five foods: both episodes hit the limit
        assert truncated.all() and not terminated.any()
        np.testing.assert_array_equal(info["episode"]["length"], [50, 50])
        assert not np.array_equal(info["final_obs"], batch["obs"])  # the new episode's start differs
        # an agent moves at most one cell: its own row and column change by at most 1
        own = slice(15, 17)  # after 5 foods x (row, col, level)
        assert np.abs(info["final_obs"][:, :, own] - before["obs"][:, :, own]).max() <= 1


def test_lbf_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown env id 'lbf-9x9-2p-2f'.*lbf-8x8-2p-2f-coop.*rware-tiny-2ag"):
        envs.make("lbf-9x9-2p-2f")
    from envs import lbf

    with pytest.raises(ValueError, match="unknown LBF task 'lbf-8x8'. Valid ids: lbf-8x8-2p-2f-coop, "):
        lbf.make("lbf-8x8")


def test_missing_packages_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lbforaging.foraging", None)  # makes the import fail
    with pytest.raises(envs.MissingDependencyError, match="pip install lbforaging==2.0.0"):
        envs.make("lbf-8x8-2p-3f")
    monkeypatch.setitem(sys.modules, "rware", None)
    with pytest.raises(envs.MissingDependencyError, match="pip install rware==2.0.0"):
        envs.make("rware-tiny-4ag")


# -------------------------------------------------------------------------- RWARE
def test_rware_delivery_rewards_the_delivering_robot():
    from rware.warehouse import Direction

    with envs.make("rware-tiny-2ag", num_envs=1, seed=0) as env:
        env.reset()
        warehouse = inner(env)
        goal_x, goal_y = warehouse.goals[0]
        robot, other = warehouse.agents
        # robot 0 carries a requested shelf one cell above a goal, facing down; robot 1 is far away
        shelf = warehouse.request_queue[0]
        robot.x, robot.y, robot.dir, robot.carrying_shelf = goal_x, goal_y - 1, Direction.DOWN, shelf
        shelf.x, shelf.y = robot.x, robot.y
        other.x, other.y = 0, 0
        warehouse._recalc_grid()
        _, reward, terminated, truncated, info = env.step(np.array([[1, 0]]))  # forward, no-op
        np.testing.assert_array_equal(info["agent_rewards"], [[1.0, 0.0]])
        np.testing.assert_array_equal(reward, [1.0])
        assert shelf not in warehouse.request_queue  # a new shelf is requested instead
        assert not (terminated | truncated).any()


def test_rware_truncates_at_the_episode_limit():
    with envs.make("rware-small-4ag", num_envs=2, seed=0, episode_limit=20) as env:
        _, (_, _, terminated, truncated, info) = run_until_done(env, 25)
        assert truncated.all() and not terminated.any()
        np.testing.assert_array_equal(info["episode"]["length"], [20, 20])
