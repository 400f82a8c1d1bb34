"""Contract tests of the SMAX family (JaxMARL, jitted) and the real-SMAC adapter's missing-dependency error.

Every test on smax-3m uses the same batch size, so the jitted functions compile once (and are
cached by envs.smax for the whole process); smax-2s3z compiles once more.
"""

from importlib.util import find_spec

import numpy as np
import pytest

import envs
from envs import random_actions

# find_spec, not importorskip: importing jaxmarl outside envs.smax prints and resets sys.stdout
needs_jaxmarl = pytest.mark.skipif(find_spec("jaxmarl") is None, reason="jaxmarl is not installed")

E = 4  # one batch size for every smax-3m env of this file: one compilation


def set_state(env, **fields):
    """Overwrite fields of the SMAX state of every env in the batch (test-only shortcut)."""
    inner = env._state.state.replace(**fields)
    env._state = env._state.replace(state=inner)


@pytest.fixture(scope="module")
def env3m():
    env = envs.make("smax-3m", num_envs=E, seed=0)
    yield env
    env.close()


@needs_jaxmarl
@pytest.mark.parametrize("env_id", ["smax-3m", "smax-2s3z"])
def test_contract_shapes_and_dtypes(env_id, env3m):
    env = env3m if env_id == "smax-3m" else envs.make(env_id, num_envs=2, seed=0)
    N = {"smax-3m": 3, "smax-2s3z": 5}[env_id]
    E_ = env.num_envs
    assert envs.family(env_id) == "smax" and env.metric_names == ("win",)
    assert env.n_agents == N and env.discrete and env.n_actions == N + 5  # 5 moves/stop + one attack per enemy
    assert env.obs_dims == [env.obs_dim] * N and env.act_dims == [env.n_actions] * N
    assert env.state_dim == 12 * 2 * N and env.episode_limit == 101  # SMAX: max_steps + 1
    batch = env.reset()
    assert batch["obs"].shape == (E_, N, env.obs_dim) and batch["obs"].dtype == np.float32
    assert batch["state"].shape == (E_, env.state_dim) and batch["state"].dtype == np.float32
    assert batch["avail"].shape == (E_, N, env.n_actions) and batch["avail"].dtype == bool
    assert batch["alive"].shape == (E_, N) and batch["alive"].all()
    batch["obs"][0, 0, 0] = 1.0  # writable, so torch.from_numpy works
    rng = np.random.default_rng(0)
    batch, reward, term, trunc, info = env.step(random_actions(env, batch, rng))
    assert reward.shape == (E_,) and reward.dtype == np.float32
    assert term.dtype == bool and trunc.dtype == bool and term.shape == trunc.shape == (E_,)
    assert info["final_obs"].shape == batch["obs"].shape and info["final_state"].shape == batch["state"].shape
    assert info["agent_rewards"].shape == (E_, N)
    np.testing.assert_array_equal(info["agent_rewards"], np.repeat(reward[:, None], N, 1))  # a team reward


@needs_jaxmarl
def test_state_holds_every_units_scaled_features(env3m):
    # the state's first 10 numbers per unit are that unit's own features as its observation
    # scales them (health fraction, position / map size, cooldown / max, type one-hot), so an
    # ally's block equals the last 10 numbers of its observation; then team and type per unit
    batch, rng = env3m.reset(seed=3), np.random.default_rng(3)
    for _ in range(15):
        batch, *_ = env3m.step(random_actions(env3m, batch, rng))
    N, U = env3m.n_agents, 2 * env3m.n_agents  # 3m: 3 allies, 3 enemies
    state = batch["state"]
    for i in range(N):
        np.testing.assert_array_equal(state[:, 10 * i : 10 * (i + 1)], batch["obs"][:, i, -10:])
    units = state[:, : 10 * U]
    assert units.min() >= 0.0 and units.max() <= 1.0 and units[:, 1:3].max() > 0.0  # positions scaled, present
    np.testing.assert_array_equal(state[0, 10 * U :], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])  # teams, then types


@needs_jaxmarl
def test_avail_masks_and_action_errors(env3m):
    batch = env3m.reset()
    # at the start nobody is in range: the 4 moves and stop are available, no attack
    assert batch["avail"][:, :, :5].all() and not batch["avail"][:, :, 5:].any()
    attack = np.zeros((E, 3), np.int64)
    attack[0, 1] = 5
    with pytest.raises(ValueError, match="not available"):
        env3m.step(attack)
    with pytest.raises(ValueError, match="out of range"):
        env3m.step(np.full((E, 3), 8))
    with pytest.raises(ValueError, match="shape"):
        env3m.step(np.zeros((E, 2), np.int64))
    rng = np.random.default_rng(1)
    for _ in range(30):  # sampling only available actions never raises
        batch, *_ = env3m.step(random_actions(env3m, batch, rng))


@needs_jaxmarl
def test_dead_agents_auto_reset_and_final_obs(env3m):
    """Random allies lose agents (alive False, only stop available, zero obs), then their battle."""
    rng = np.random.default_rng(2)
    batch = env3m.reset(seed=2)
    saw_dead, saw_end, saw_lost = False, False, False
    only_stop = np.zeros(env3m.n_actions, bool)
    only_stop[4] = True
    for _ in range(150):
        batch, reward, term, trunc, info = env3m.step(random_actions(env3m, batch, rng))
        dead = ~batch["alive"]
        if dead.any():
            saw_dead = True
            assert (batch["avail"][dead] == only_stop).all()
            assert not batch["obs"][dead].any()
        done = term | trunc
        np.testing.assert_array_equal(info["final_obs"][~done], batch["obs"][~done])
        np.testing.assert_array_equal(info["final_state"][~done], batch["state"][~done])
        if done.any():
            saw_end = True
            assert "episode" in info and set(info["episode"]) == {"return", "length", "win"}
            ep = info["episode"]
            assert (ep["length"][done] >= 1).all() and set(ep["win"][done]) <= {0.0, 1.0}
            assert (ep["win"][trunc] == 0).all()
            assert batch["alive"][done].all()  # the next battle starts with everyone
            assert not np.array_equal(info["final_obs"][done], batch["obs"][done])
            assert not np.array_equal(info["final_state"][done], batch["state"][done])
            # the masks of the battle's last step: a lost battle ends with every ally dead
            lost = done & (ep["win"] == 0) & term
            assert not info["final_alive"][lost].any()
            final_dead = ~info["final_alive"] & done[:, None]
            assert (info["final_avail"][final_dead] == only_stop).all()
            saw_lost = saw_lost or lost.any()
        else:
            assert "episode" not in info
    assert saw_dead and saw_end and saw_lost


@needs_jaxmarl
def test_win_is_terminated_with_bonus(env3m):
    """Remove every enemy's health: the next step is a won battle (reward >= the +1 bonus)."""
    env3m.reset(seed=3)
    health = env3m._state.state.unit_health
    set_state(env3m, unit_health=health.at[:, 3:].set(0.0))
    stop = np.full((E, 3), 4)
    batch, reward, term, trunc, info = env3m.step(stop)
    assert term.all() and not trunc.any()
    np.testing.assert_array_equal(info["episode"]["win"], np.ones(E))
    assert (reward >= 1.0).all()
    assert info["final_obs"].any() and batch["alive"].all()


@needs_jaxmarl
def test_truncated_at_step_limit(env3m):
    """Set SMAX's step counter to max_steps = episode_limit - 1: the next step truncates."""
    env3m.reset(seed=4)
    step = env3m._state.state.step
    set_state(env3m, step=step + (env3m.episode_limit - 1))
    batch, reward, term, trunc, info = env3m.step(np.full((E, 3), 4))
    assert trunc.all() and not term.any()
    np.testing.assert_array_equal(info["episode"]["win"], np.zeros(E))
    np.testing.assert_array_equal(info["episode"]["length"], np.ones(E))  # counted from reset()


@needs_jaxmarl
def test_seeding_gives_identical_trajectories(env3m):
    other = envs.make("smax-3m", num_envs=E, seed=7)  # same map and batch size: no new compilation

    def rollout(env, seed):
        rng = np.random.default_rng(seed)
        batch, out = env.reset(seed=seed), []
        for _ in range(40):
            batch, reward, term, trunc, _ = env.step(random_actions(env, batch, rng))
            out.append((batch["obs"], batch["state"], reward, term))
        return out

    a, b = rollout(env3m, 7), rollout(other, 7)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(rollout(other, 8)[0][0], a[0][0])
    # envs of one batch differ from each other
    assert not np.array_equal(a[0][0][0], a[0][0][1])


def test_smac_without_starcraft_names_smax():
    with pytest.raises(envs.MissingDependencyError, match="smax-3m") as e:
        envs.make("smac-3m")
    assert "oxwhirl/smac" in str(e.value) and "SC2PATH" in str(e.value)


def test_every_smax_id_is_known():
    assert all(envs.family(i) == "smax" for i in envs.ids() if i.startswith("smax-"))
    assert "smax-3m" in envs.ids() and "smax-MMM2" not in envs.ids()
