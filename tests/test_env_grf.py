"""Google Research Football (`grf-*`): a clear error without gfootball; the contract where it is built
(it is not in requirements.txt: see envs/grf.py and docs/lbf-rware.md)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

import envs
from envs import random_actions
from tests.contract import rollout, run_until_done

has_gfootball = importlib.util.find_spec("gfootball") is not None
needs_gfootball = pytest.mark.skipif(not has_gfootball, reason="gfootball is not built here (see envs/grf.py)")


def test_without_gfootball_the_error_says_how_to_build_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gfootball", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "gfootball.env", None)
    for env_id in envs.GRF_IDS:
        with pytest.raises(envs.MissingDependencyError, match=f"env '{env_id}' needs Google Research Football") as e:
            envs.make(env_id)
        assert "libboost-python-dev" in str(e.value)
        assert "pip install --no-build-isolation gfootball==2.10.2" in str(e.value)


def test_unknown_scenario_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown env id 'grf-academy_corner'.*grf-academy_3_vs_1_with_keeper"):
        envs.make("grf-academy_corner")


@needs_gfootball
@pytest.mark.parametrize(
    "env_id, n_agents",
    [("grf-academy_3_vs_1_with_keeper", 3), ("grf-academy_pass_and_shoot_with_keeper", 2),
     ("grf-academy_counterattack_easy", 4)],
)  # fmt: skip
def test_contract(env_id, n_agents):
    with envs.make(env_id, num_envs=2, seed=0) as env:
        assert env.n_agents == n_agents
        assert env.obs_dims == [115] * env.n_agents and env.n_actions == 19
        assert env.state_dim == 115 * env.n_agents and env.episode_limit == 400
        rollout(env, steps=5)


def engine_seeds(env) -> list[int]:
    """The game-engine seed of the current episode of each env of a batch."""
    return [e.env.env.env.unwrapped._config["game_engine_random_seed"] for e in env.vec.envs]


@needs_gfootball
def test_seeding_draws_the_same_engine_seeds():
    """The same seed gives the same engine seed to each episode (env e seeded with seed + e). The
    engine itself is not reproducible (two runs' observations may differ by ~1e-3 from the first
    step, see envs/grf.py), so the contract's same-trajectory check does not apply here, and the
    episodes of two runs may end at different steps: the sequences of engine seeds are compared."""
    runs = []
    for _ in range(2):
        with envs.make("grf-academy_pass_and_shoot_with_keeper", num_envs=2, seed=3) as env:
            rng = np.random.default_rng(0)
            batch = env.reset()
            episodes = [[seed] for seed in engine_seeds(env)]  # per env, its episodes' engine seeds
            while min(map(len, episodes)) < 3:  # episodes last at most 400 steps
                batch, *_ = env.step(random_actions(env, batch, rng))
                for seeds, seed in zip(episodes, engine_seeds(env)):
                    if seed != seeds[-1]:
                        seeds.append(seed)
            runs.append(episodes)
    for a, b in zip(*runs):
        assert a[:3] == b[:3]
    assert runs[0][0][0] != runs[0][1][0]  # the two envs of a batch differ


@needs_gfootball
def test_episode_ends_early_with_a_win_flag():
    with envs.make("grf-academy_3_vs_1_with_keeper", num_envs=2, seed=0) as env:
        _, (_, reward, terminated, truncated, info) = run_until_done(env, 400)
        done = terminated | truncated
        # random play loses the ball or kicks it out long before the 400 steps of the scenario
        assert terminated[done].all() and (info["episode"]["length"][done] < 400).all()
        assert set(info["episode"]["win"][done]) <= {0.0, 1.0}
        np.testing.assert_allclose(reward, info["agent_rewards"].sum(1), rtol=1e-6)  # the team reward is the sum
