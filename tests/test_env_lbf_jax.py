"""LBF's jax backend (`backend="jax"`, Jumanji's LBF with lbforaging's rules) against the reference,
lbforaging 2.0.0.

Equivalence: the same sizes and spaces; along jax trajectories, every step of every env is redone in
an lbforaging env set to the same state (same observations, masks, per-agent rewards and episode
ends); hand-built moves where the two libraries' own rules differ (swaps, following, the chained
collision that makes two lbforaging agents share a cell); the spawn obeys lbforaging's placement
rules and draws the same start distribution. Every jax env uses batch size E, so that each task
compiles once per process.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest

import envs
import envs.lbf
from envs import random_actions
from tests.contract import assert_same_interface, assert_same_trajectories, rollout, run_until_done

pytestmark = pytest.mark.skipif(
    find_spec("jumanji") is None or find_spec("lbforaging") is None, reason="needs jumanji and lbforaging"
)
E = 4  # batch size of every jax env


def jax_env(env_id, seed=0, **options):
    return envs.make(env_id, num_envs=E, seed=seed, backend="jax", **options)


def reference(env_id):
    """A bare lbforaging env of the task (reset once, so that its players exist)."""
    from lbforaging.foraging import ForagingEnv

    raw = ForagingEnv(**envs.lbf.task_kwargs(env_id, envs.lbf.EPISODE_LIMIT))
    raw.reset(seed=0)
    return raw


def copy_state(raw, state, e: int) -> None:
    """Put the lbforaging env `raw` in the state of env e of a jax batch of states."""
    food, agents = state.food_items, state.agents
    raw.field[:] = 0
    for (row, col), level, eaten in zip(food.position[e], food.level[e], food.eaten[e]):
        if not eaten:
            raw.field[row, col] = level
    raw._food_spawned = int(food.level[e].sum())  # every food of the episode, loaded or not
    for player, (row, col), level in zip(raw.players, agents.position[e], agents.level[e]):
        player.position, player.level = (int(row), int(col)), int(level)
    raw.current_step = int(state.step_count[e])
    raw._game_over = False
    raw._gen_valid_moves()


def set_state(env, food: dict, players: list, e: int = 0) -> None:
    """Set env e of a jax batch to `food` {(row, col): level} (the others eaten, at their old cells)
    and players [(row, col, level)], at step 0."""
    jax = env.c.jax
    s = jax.device_get(env._state)
    agents = s.agents.replace(
        position=s.agents.position.copy(), level=s.agents.level.copy(), loading=np.zeros_like(s.agents.loading)
    )
    foods = s.food_items.replace(position=s.food_items.position.copy(), level=s.food_items.level.copy(),
                                 eaten=np.ones_like(s.food_items.eaten))  # fmt: skip
    foods.level[e] = 0  # the foods not given: loaded, worth nothing
    for k, ((row, col), level) in enumerate(food.items()):
        foods.position[e, k], foods.level[e, k], foods.eaten[e, k] = (row, col), level, False
    for i, (row, col, level) in enumerate(players):
        agents.position[e, i], agents.level[e, i] = (row, col), level
    step = np.array(s.step_count)
    step[e] = 0
    env._state = jax.device_put(s.replace(agents=agents, food_items=foods, step_count=step), env.c.cpu)
    env._return[e], env._length[e] = 0.0, 0


_VIEWS = {}  # compiled -> jitted (observe, valid) of one env


def current_obs(env, e: int):
    """obs [N, obs_dim] and avail [N, 6] of env e of the jax batch, from its state now."""
    jax, c = env.c.jax, env.c
    if c not in _VIEWS:
        _VIEWS[c] = jax.jit(lambda state, e: (c.observe(s := jax.tree.map(lambda x: x[e], state)), c.valid(s)))
    return jax.device_get(_VIEWS[c](env._state, e))


def step_both(env, raw, actions: np.ndarray, e: int = 0):
    """Step the jax batch (the other envs do nothing) and lbforaging, set to env e's state, with env e's
    actions; check that both give the same observations, masks, rewards and episode end."""
    state = env.c.jax.device_get(env._state)
    copy_state(raw, state, e)
    obs, avail = current_obs(env, e)
    np.testing.assert_array_equal(obs, np.stack(raw._make_gym_obs()))
    np.testing.assert_array_equal(avail, envs.lbf.valid_actions(raw))
    batch_actions = np.zeros((E, env.n_agents), np.int64)
    batch_actions[e] = actions
    batch, reward, terminated, truncated, info = env.step(batch_actions)
    ref_obs, ref_rewards, ref_done, _, _ = raw.step(list(actions))
    done = terminated[e] | truncated[e]
    obs = info["final_obs"][e] if done else batch["obs"][e]
    np.testing.assert_array_equal(obs, np.stack(ref_obs))
    np.testing.assert_allclose(info["agent_rewards"][e], ref_rewards, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(reward[e], sum(ref_rewards), rtol=1e-6, atol=1e-7)
    assert done == ref_done and terminated[e] == (raw.field.sum() == 0)
    if env.c.action_masks:
        np.testing.assert_array_equal((info["final_avail"] if done else batch["avail"])[e], envs.lbf.valid_actions(raw))
    return batch, reward, terminated, truncated, info


# ------------------------------------------------------------------------------ the contract
@pytest.mark.parametrize("env_id", envs.LBF_IDS)
def test_contract_and_the_same_sizes_as_lbforaging(env_id):
    with jax_env(env_id) as fast, envs.make(env_id, num_envs=1) as ref:
        assert_same_interface(fast, ref)
        rollout(fast, steps=55)  # through the 50-step truncation and its auto-reset


def test_seeding_gives_same_trajectories_and_truncates_after_50_steps():
    assert_same_trajectories(lambda: jax_env("lbf-10x10-3p-3f", seed=3), steps=20)
    with jax_env("lbf-15x15-4p-5f") as env:
        before, (batch, reward, terminated, truncated, info) = run_until_done(env, 60)
        assert truncated.all() and not terminated.any()  # random agents rarely load all five foods
        np.testing.assert_array_equal(info["episode"]["length"], [50] * E)
        assert not np.array_equal(info["final_obs"], batch["obs"])  # the new episode's start differs
        own = slice(15, 17)  # an agent moves at most one cell
        assert np.abs(info["final_obs"][:, :, own] - before["obs"][:, :, own]).max() <= 1
        np.testing.assert_allclose(reward, info["agent_rewards"].sum(1), rtol=1e-6)


def test_bad_options_name_the_choices():
    with pytest.raises(ValueError, match=r"backend must be one of \('lbforaging', 'jax'\).*got 'nope'"):
        envs.make("lbf-8x8-2p-3f", backend="nope")
    with pytest.raises(ValueError, match="vectorization='async' applies to backend='lbforaging' only"):
        envs.make("lbf-8x8-2p-3f", backend="jax", vectorization="async")
    with pytest.raises(ValueError, match="unknown option"):
        envs.make("lbf-8x8-2p-3f", backend="jax", sight=3)
    assert envs.BACKENDS["lbf"][0] == "lbforaging"  # the default
    assert not envs.batched("lbf-8x8-2p-3f")


# ----------------------------------------------------------- the same steps as lbforaging
@pytest.mark.parametrize("env_id", envs.LBF_IDS)
def test_same_state_and_actions_give_the_same_step(env_id):
    """Along a 60-step jax trajectory of E envs (random available actions), each env's step is redone
    in lbforaging from the same state."""
    rng = np.random.default_rng(0)
    raw = reference(env_id)
    with jax_env(env_id) as env:
        batch = env.reset()
        for _ in range(60):
            actions = random_actions(env, batch, rng)
            state = env.c.jax.device_get(env._state)
            for e in range(E):
                copy_state(raw, state, e)
                np.testing.assert_array_equal(batch["obs"][e], np.stack(raw._make_gym_obs()))
                np.testing.assert_array_equal(batch["avail"][e], envs.lbf.valid_actions(raw))
            batch, reward, terminated, truncated, info = env.step(actions)
            for e in range(E):
                copy_state(raw, state, e)
                ref_obs, ref_rewards, ref_done, _, _ = raw.step(list(actions[e]))
                done = terminated[e] | truncated[e]
                np.testing.assert_array_equal((info["final_obs"] if done else batch["obs"])[e], np.stack(ref_obs))
                np.testing.assert_allclose(info["agent_rewards"][e], ref_rewards, rtol=1e-6, atol=1e-7)
                assert done == ref_done and terminated[e] == (raw.field.sum() == 0)


def test_invalid_actions_act_as_none_without_masks():
    rng = np.random.default_rng(1)
    raw = reference("lbf-8x8-2p-3f")
    with jax_env("lbf-8x8-2p-3f", action_masks=False) as env:
        batch = env.reset()
        assert batch["avail"].all()
        for _ in range(30):
            step_both(env, raw, rng.integers(0, 6, env.n_agents), e=int(rng.integers(E)))


# ---------------------------------------------------- hand-built moves, checked by hand too
def positions(obs):
    """Each agent's own (row, col) on a full-sight 10x10-3p-3f (after 3 foods x 3)."""
    return [tuple(int(v) for v in o[9:11]) for o in obs]


@pytest.mark.parametrize(
    "start, actions, expected",
    [
        # two agents swap cells (lbforaging lets them; Jumanji's own movement would block both)
        ([(2, 2, 1), (2, 3, 1), (8, 8, 1)], [4, 3, 0], [(2, 3), (2, 2), (8, 8)]),
        # an agent follows another into the cell it leaves
        ([(2, 2, 1), (2, 3, 1), (8, 8, 1)], [4, 4, 0], [(2, 3), (2, 4), (8, 8)]),
        # two agents claim one cell: neither moves
        ([(2, 2, 1), (2, 4, 1), (8, 8, 1)], [4, 3, 0], [(2, 2), (2, 4), (8, 8)]),
        # a chain: the second is blocked by a third that stays, the first still moves: two share a cell
        ([(2, 2, 1), (2, 3, 1), (2, 4, 1)], [4, 4, 0], [(2, 3), (2, 3), (2, 4)]),
        # moving into a food or off the grid is invalid: NONE (action_masks=False)
        ([(3, 2, 1), (0, 0, 1), (9, 9, 1)], [4, 1, 4], [(3, 2), (0, 0), (9, 9)]),
    ],
)
def test_moves_follow_lbforaging(start, actions, expected):
    raw = reference("lbf-10x10-3p-3f")
    with jax_env("lbf-10x10-3p-3f", action_masks=False) as env:
        env.reset()
        set_state(env, {(3, 3): 2, (6, 6): 1}, start)
        batch, *_ = step_both(env, raw, np.array(actions))
        assert positions(batch["obs"][0]) == expected
        # and one more step from there (with shared cells: both stay, then one leaves)
        step_both(env, raw, np.array([2, 0, 0]))


def test_two_level_1_agents_load_a_level_2_food_and_a_perfect_episode_returns_1():
    raw = reference("lbf-8x8-2p-2f-coop")
    with jax_env("lbf-8x8-2p-2f-coop", action_masks=False) as env:
        env.reset()
        set_state(env, {(3, 3): 2, (6, 6): 2}, [(3, 2, 1), (3, 4, 1)])
        _, reward, terminated, truncated, info = step_both(env, raw, np.array([5, 0]))  # one alone fails
        np.testing.assert_array_equal(info["agent_rewards"][0], [0.0, 0.0])
        _, reward, terminated, truncated, info = step_both(env, raw, np.array([5, 5]))
        # each: level 1 x food level 2 / (loading levels 2 x all food levels 4) = 0.25
        np.testing.assert_allclose(info["agent_rewards"][0], [0.25, 0.25], rtol=1e-6)
        np.testing.assert_allclose(reward[0], 0.5, rtol=1e-6)
        assert not (terminated | truncated).any()
        # to the other food: agent 0 to (6, 5), agent 1 to (6, 7), then both load
        for a0, a1 in [(2, 4), (2, 4), (2, 4), (4, 2), (4, 2), (4, 2)]:
            step_both(env, raw, np.array([a0, a1]))
        _, reward, terminated, truncated, info = step_both(env, raw, np.array([5, 5]))
        np.testing.assert_allclose(info["agent_rewards"][0], [0.25, 0.25], rtol=1e-6)
        assert terminated[0] and not truncated[0]
        np.testing.assert_allclose(info["episode"]["return"][0], 1.0, rtol=1e-6)
        np.testing.assert_array_equal(info["episode"]["length"][0], 9)


def test_partial_sight_window_near_the_edges():
    """Sight 2: foods within 2 cells; other agents in lbforaging's window [max(own - 2, 0), that + 4],
    which near the top / left edge reaches up to 4 cells away; coordinates relative to the window."""
    raw = reference("lbf-2s-10x10-3p-3f")
    with jax_env("lbf-2s-10x10-3p-3f", action_masks=False) as env:
        env.reset()
        set_state(env, {(2, 2): 1, (5, 5): 1, (7, 1): 1}, [(0, 1, 1), (4, 4, 2), (3, 1, 1)])
        obs, _ = current_obs(env, 0)
        # agent 0 at (0, 1): window origin (0, 0); food (2, 2) seen, (5, 5) and (7, 1) not;
        # itself (0, 1), agent 1 at (4, 4) seen (4 rows and 3 columns away), agent 2 (3, 1) seen
        np.testing.assert_array_equal(obs[0], [2, 2, 1, -1, -1, 0, -1, -1, 0, 0, 1, 1, 4, 4, 2, 3, 1, 1])
        # agent 1 at (4, 4): window origin (2, 2); food (2, 2) -> (0, 0) and (5, 5) -> (3, 3), row-major;
        # agent 0 at (0, 1) is out of [2, 6]; agent 2 at (3, 1) too (column 1 < 2)
        np.testing.assert_array_equal(obs[1], [0, 0, 1, 3, 3, 1, -1, -1, 0, 2, 2, 2, -1, -1, 0, -1, -1, 0])
        step_both(env, raw, np.array([0, 0, 0]))


# ------------------------------------------------------------------------------- the spawn
def spawned(env_id: str, n: int):
    """n start states of the jax backend and n of lbforaging: agent cells [n, N, 2], levels [n, N],
    food cells [n, F, 2], levels [n, F]."""
    with jax_env(env_id) as env:
        jax = env.c.jax
        s = jax.device_get(jax.jit(jax.vmap(env.c.spawn))(jax.random.split(jax.random.key(0), n)))
        fast = (s.agents.position, s.agents.level, s.food_items.position, s.food_items.level)
    raw, ref = reference(env_id), ([], [], [], [])
    for k in range(n):
        raw.reset(seed=k)
        cells = np.argwhere(raw.field > 0)
        ref[0].append([p.position for p in raw.players])
        ref[1].append([p.level for p in raw.players])
        ref[2].append(cells)
        ref[3].append(raw.field[tuple(cells.T)])
    return fast, tuple(np.array(x) for x in ref)


@pytest.mark.parametrize("env_id", ["lbf-8x8-2p-2f-coop", "lbf-8x8-2p-3f", "lbf-15x15-4p-3f"])
def test_spawn_follows_lbforagings_rules_and_distribution(env_id):
    kw = envs.lbf.task_kwargs(env_id, 50)
    S, F, n = kw["field_size"][0], kw["max_num_food"], 2000
    fast, ref = spawned(env_id, n)
    for agent_rc, agent_level, food_rc, food_level in zip(*fast):
        assert len({tuple(p) for p in agent_rc}) == len(agent_rc)  # distinct cells
        assert ((food_rc >= 1) & (food_rc <= S - 2)).all()  # inside the border
        assert not {tuple(p) for p in food_rc} & {tuple(p) for p in agent_rc}
        d = np.abs(food_rc[:, None] - food_rc[None])
        near = ((d <= 1).all(-1) | ((d == 0) & (d <= 2)[..., ::-1]).any(-1)) & ~np.eye(F, dtype=bool)
        assert not near.any()
        top = np.sort(agent_level)[:3].sum()
        assert set(agent_level) <= {1, 2} and 1 <= food_level.min() and food_level.max() <= top
        assert (food_level == top).all() or not kw["force_coop"]

    def stats(agent_rc, agent_level, food_rc, food_level):
        border = ((agent_rc == 0) | (agent_rc == S - 1)).any(-1)
        dist = np.abs(agent_rc[:, :, None] - food_rc[:, None]).sum(-1).min(-1)
        return {"agent on border": border, "agent level": agent_level, "food level": food_level,
                "food row": food_rc[..., 0], "food col": food_rc[..., 1], "agent-food distance": dist}  # fmt: skip

    a, b = stats(*fast), stats(*ref)
    for name in a:
        x, y = a[name].reshape(n, -1).mean(1), b[name].reshape(n, -1).mean(1)
        se = np.sqrt(x.var() / n + y.var() / n)
        assert abs(x.mean() - y.mean()) < 4 * se + 1e-9, (name, x.mean(), y.mean(), se)
