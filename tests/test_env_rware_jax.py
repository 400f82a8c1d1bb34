"""RWARE's jax backend (`backend="jax"`, Jumanji's RobotWarehouse with rware's rules) against the
reference, rware 2.0.0.

Equivalence: the same sizes and spaces; along jax trajectories, every step of every env is redone in
an rware env set to the same state (same robots, shelves and requests afterwards, same observations
and per-robot rewards, a new request drawn where rware draws one); hand-built moves, loads and
deliveries where the two libraries' own rules differ (rware's conflict resolution, no-op while
loaded, a loaded robot following another); the spawn draws rware's start distribution. Every jax env
uses batch size E, so that each task compiles once per process.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest

import envs
import envs.rware
from envs.rware import FORWARD, LEFT, NOOP, RIGHT, RWARE_DIRECTION, TOGGLE_LOAD
from tests.contract import assert_same_interface, assert_same_trajectories, rollout, run_until_done

pytestmark = pytest.mark.skipif(
    find_spec("jumanji") is None or find_spec("rware") is None, reason="needs jumanji and rware"
)
E = 4  # batch size of every jax env
UP, RIGHTWARD, DOWN, LEFTWARD = range(4)  # Jumanji's directions, as the jax state holds them


def jax_env(env_id, seed=0, **options):
    return envs.make(env_id, num_envs=E, seed=seed, backend="jax", **options)


def reference(env_id):
    """A bare rware Warehouse of the task (reset once, so that its robots exist)."""
    import gymnasium as gym
    from rware.warehouse import Warehouse

    raw = Warehouse(**gym.spec(f"{env_id}-v2").kwargs)
    raw.reset(seed=0)
    return raw


def copy_state(raw, s, e: int) -> None:
    """Put the rware env `raw` in the state of env e of a jax batch of states (numpy)."""
    from rware.warehouse import Direction

    for shelf, row, col in zip(raw.shelfs, s.shelves.position.x[e], s.shelves.position.y[e]):
        shelf.x, shelf.y = int(col), int(row)
    raw.request_queue = [raw.shelfs[i] for i in s.request_queue[e]]
    a = s.agents
    for k, robot in enumerate(raw.agents):
        row, col = int(a.position.x[e, k]), int(a.position.y[e, k])
        robot.x, robot.y, robot.dir = col, row, Direction(int(RWARE_DIRECTION[a.direction[e, k]]))
        robot.carrying_shelf = raw.shelfs[s.grid[e, 0, row, col] - 1] if a.is_carrying[e, k] else None
    raw._cur_steps = int(s.step_count[e])
    raw._recalc_grid()


def set_state(env, robots: list, carried: dict | None = None, e: int = 0) -> None:
    """Set env e of a jax batch to robots [(row, col, Jumanji direction)], robot k carrying shelf
    carried[k] (moved to its cell), at step 0; the other shelves where they stand."""
    jax = env.c.jax
    s = jax.device_get(env._state)
    a, sh = s.agents, s.shelves
    rows, cols, dirs = a.position.x.copy(), a.position.y.copy(), a.direction.copy()
    carrying = a.is_carrying.copy()
    carrying[e] = 0
    srows, scols = sh.position.x.copy(), sh.position.y.copy()
    for k, (row, col, d) in enumerate(robots):
        rows[e, k], cols[e, k], dirs[e, k] = row, col, d
    for k, shelf in (carried or {}).items():
        srows[e, shelf], scols[e, shelf], carrying[e, k] = rows[e, k], cols[e, k], 1
    agents = a._replace(position=type(a.position)(rows, cols), direction=dirs, is_carrying=carrying)
    shelves = sh._replace(position=type(sh.position)(srows, scols))
    grid = np.asarray(jax.vmap(env.c.regrid)(agents, shelves))
    step = np.array(s.step_count)
    step[e] = 0
    env._state = jax.device_put(s.replace(agents=agents, shelves=shelves, grid=grid, step_count=step), env.c.cpu)
    env._return[e], env._length[e] = 0.0, 0


def shelf_at(env, row: int, col: int, e: int = 0) -> int:
    s = env.c.jax.device_get(env._state)
    return int(s.grid[e, 0, row, col]) - 1


def set_order_tie(raw, actions) -> bool:
    """Whether rware's step with these actions meets its one tie that the jax backend does not break as
    rware does: a weakly connected component of fewer than half the graph's cells whose longest path is
    not unique (then networkx orders the component's cells by Python's set order, i.e. by their hashes)."""
    import networkx as nx

    G = nx.DiGraph()
    for robot, action in zip(raw.agents, actions):
        start = robot.x, robot.y
        target = start
        if action == FORWARD:
            dx, dy = {0: (0, -1), 1: (0, 1), 2: (-1, 0), 3: (1, 0)}[robot.dir.value]
            target = min(max(robot.x + dx, 0), raw.grid_size[1] - 1), min(max(robot.y + dy, 0), raw.grid_size[0] - 1)
            other = raw.grid[0, target[1], target[0]]
            held = other and raw.agents[other - 1].carrying_shelf
            if robot.carrying_shelf and target != start and raw.grid[1, target[1], target[0]] and not held:
                target = start
        G.add_edge(start, target)
    for comp in nx.weakly_connected_components(G):
        sub = G.subgraph(comp)
        if 2 * len(comp) >= len(G) or not nx.is_directed_acyclic_graph(sub):
            continue
        depth = {}
        for v in nx.topological_sort(sub):
            depth[v] = max((depth[u] + 1 for u in sub.predecessors(v)), default=0)
        if any(sum(depth[u] == depth[v] - 1 for u in sub.predecessors(v)) > 1 for v in sub):
            return True
    return False


_OBSERVE = {}  # compiled -> jitted, vmapped observe


def observe(env) -> np.ndarray:
    """obs [E, N, 71] of the jax batch, from its state now."""
    c = env.c
    if c not in _OBSERVE:
        _OBSERVE[c] = c.jax.jit(c.jax.vmap(c.observe))
    return np.asarray(_OBSERVE[c](env._state))


def step_and_check(env, raw, actions, envs_checked=range(E), ties: list | None = None):
    """Step the jax batch with `actions` [E, N] and, for each env e checked, rware set to env e's state
    before the step, with env e's actions; check that both give the same robots, shelves, requests,
    observations, rewards and episode end. rware draws its new requests after a delivery from its own
    random stream: it must replace the same shelves, then takes the jax env's new ones, so that the
    observations can be compared. A step with `set_order_tie` may differ (then counted in `ties`)."""
    jax = env.c.jax
    before = jax.device_get(env._state)
    start_obs = observe(env)
    out = batch, reward, terminated, truncated, info = env.step(actions)
    new = jax.device_get(env._state)
    for e in envs_checked:
        copy_state(raw, before, e)
        np.testing.assert_array_equal(start_obs[e], np.stack([raw._make_obs(robot) for robot in raw.agents]))
        tie = set_order_tie(raw, actions[e])
        queue = [raw.shelfs.index(shelf) for shelf in raw.request_queue]
        _, ref_rewards, ref_done, _, _ = raw.step(list(actions[e]))
        done = terminated[e] | truncated[e]
        assert not terminated[e] and done == ref_done
        obs = (info["final_obs"] if done else batch["obs"])[e]
        robots = [(r.x, r.y, r.carrying_shelf is not None, r.dir.value) for r in raw.agents]
        if robots != [(int(o[0]), int(o[1]), bool(o[2]), int(np.argmax(o[3:7]))) for o in obs]:
            assert tie and ties is not None, ("the robots differ", robots, obs[:, :7], actions[e])
            ties.append(e)
            continue
        np.testing.assert_array_equal(info["agent_rewards"][e], ref_rewards)
        np.testing.assert_allclose(reward[e], sum(ref_rewards))
        if done:  # the jax env has reset (rware's request after a delivery on the last step is not compared)
            if sum(ref_rewards) == 0:
                np.testing.assert_array_equal(obs, np.stack([raw._make_obs(robot) for robot in raw.agents]))
            continue
        new_queue = new.request_queue[e].tolist()
        delivered = [q for q in queue if q not in [raw.shelfs.index(shelf) for shelf in raw.request_queue]]
        assert delivered == [q for q in queue if q not in new_queue] and len(set(new_queue)) == len(queue)
        assert len(delivered) == sum(ref_rewards)
        raw.request_queue = [raw.shelfs[i] for i in new_queue]
        for shelf, row, col in zip(raw.shelfs, new.shelves.position.x[e], new.shelves.position.y[e]):
            assert (shelf.y, shelf.x) == (row, col)
        np.testing.assert_array_equal(obs, np.stack([raw._make_obs(robot) for robot in raw.agents]))
    return out


def step_both(env, raw, actions, e: int = 0):
    """Step env e of the jax batch with `actions` [N] (the others do nothing) and rware (checked)."""
    batch_actions = np.zeros((E, env.n_agents), np.int64)
    batch_actions[e] = actions
    return step_and_check(env, raw, batch_actions, envs_checked=[e])


# ------------------------------------------------------------------------------ the contract
@pytest.mark.parametrize("env_id", envs.RWARE_IDS)
def test_contract_and_the_same_sizes_as_rware(env_id):
    with jax_env(env_id) as fast, envs.make(env_id, num_envs=1) as ref:
        a = assert_same_interface(fast, ref)
        assert a["avail"].all()  # no masks, as rware
        rollout(fast, steps=20)  # the truncation: below


def test_seeding_gives_same_trajectories_and_truncates_after_500_steps():
    assert_same_trajectories(lambda: jax_env("rware-tiny-4ag", seed=3), steps=30)
    with jax_env("rware-tiny-2ag") as env:
        rng, batch = np.random.default_rng(0), env.reset()
        for t in range(500):  # random steps to the end of the episode
            before, (batch, reward, terminated, truncated, info) = batch, env.step(rng.integers(0, 5, (E, 2)))
            assert not (terminated | truncated).any() or t == 499
        assert truncated.all() and not terminated.any()
        np.testing.assert_array_equal(info["episode"]["length"], [500] * E)
        assert not np.array_equal(info["final_obs"], batch["obs"])  # the new episode's start differs
        assert np.abs(info["final_obs"][:, :, :2] - before["obs"][:, :, :2]).sum(-1).max() <= 1  # one cell at most
        np.testing.assert_array_equal(info["final_state"], info["final_obs"].reshape(E, -1))
        np.testing.assert_allclose(reward, info["agent_rewards"].sum(1))
    with jax_env("rware-tiny-2ag", episode_limit=7) as env:  # the option
        _, (_, _, _, truncated, info) = run_until_done(env, 10)
        assert truncated.all() and (info["episode"]["length"] == 7).all()


def test_bad_options_name_the_choices():
    with pytest.raises(ValueError, match=r"backend must be one of \('rware', 'jax'\).*got 'nope'"):
        envs.make("rware-tiny-2ag", backend="nope")
    with pytest.raises(ValueError, match="vectorization='async' applies to backend='rware' only"):
        envs.make("rware-tiny-2ag", backend="jax", vectorization="async")
    with pytest.raises(ValueError, match="unknown option"):
        envs.make("rware-tiny-2ag", backend="jax", sensor_range=2)
    with pytest.raises(ValueError, match="unknown RWARE task 'rware-medium-2ag'"):
        envs.rware.make("rware-medium-2ag", backend="jax")
    assert envs.BACKENDS["rware"][0] == "rware"  # the default
    assert not envs.batched("rware-tiny-2ag") and not envs.batched("rware-tiny-2ag", {"backend": "jax"})


# ------------------------------------------------------------- the same steps as rware
ACTION_P = [0.1, 0.5, 0.1, 0.1, 0.2]  # noop, forward, left, right, load: robots that get somewhere


def crowd(env, rng) -> None:
    """Every env: the robots on distinct cells of the bottom four rows around the goals, random
    directions, each carrying one of the requested shelves (collisions and deliveries are frequent)."""
    s = env.c.jax.device_get(env._state)
    R, C = env.c.grid_size
    cells = [(r, c) for r in range(R - 4, R) for c in range(C // 2 - 3, C // 2 + 3)]
    for e in range(E):
        chosen = rng.choice(len(cells), env.n_agents, replace=False)
        robots = [(*cells[k], int(rng.integers(4))) for k in chosen]
        set_state(env, robots, {k: int(s.request_queue[e, k]) for k in range(env.n_agents)}, e)


@pytest.mark.parametrize("env_id", envs.RWARE_IDS)
def test_same_state_and_actions_give_the_same_step(env_id):
    """Along jax trajectories of E envs (random actions, mostly forward), each env's step is redone in
    rware from the same state: 100 steps from the spawn, then 2 x 40 from crowded starts near the
    goals (robots carrying requested shelves), the last 10 through the truncation."""
    rng = np.random.default_rng(0)
    raw, ties, delivered = reference(env_id), [], 0.0
    with jax_env(env_id) as env:
        env.reset()
        for t in range(190):
            if t in (100, 140):
                crowd(env, rng)
            if t == 180:  # to the episode's end
                env._state = env._state.replace(step_count=env._state.step_count * 0 + 495)
            actions = rng.choice(5, size=(E, env.n_agents), p=ACTION_P)
            delivered += step_and_check(env, raw, actions, ties=ties)[1].sum()
    assert delivered >= 2, delivered  # deliveries were compared
    assert len(ties) <= 2, ties  # rware's hash-ordered ties: rare


# ---------------------------------------------- hand-built moves, loads and deliveries, by hand too
# tiny: 11 rows x 10 columns; highways in columns 0, 3, 6, 9, rows 0, 9, 10 and columns 4-5 below row 0;
# shelves in rows 1-8 of columns 1, 2, 7, 8; goals at row 10, columns 4 and 5
def cells(env, e: int = 0) -> list:
    s = env.c.jax.device_get(env._state)
    return [(int(r), int(c)) for r, c in zip(s.agents.position.x[e], s.agents.position.y[e])]


@pytest.mark.parametrize(
    "env_id, start, actions, expected",
    [
        # two robots swapping cells: neither moves (a cycle of two)
        ("rware-tiny-2ag", [(9, 4, RIGHTWARD), (9, 5, LEFTWARD)], [FORWARD, FORWARD], [(9, 4), (9, 5)]),
        # a robot follows another into the cell it leaves
        ("rware-tiny-2ag", [(9, 4, RIGHTWARD), (9, 5, RIGHTWARD)], [FORWARD, FORWARD], [(9, 5), (9, 6)]),
        # two robots into one free cell: the first robot's (networkx's order of the graph's cells)
        ("rware-tiny-2ag", [(9, 3, RIGHTWARD), (9, 5, LEFTWARD)], [FORWARD, FORWARD], [(9, 4), (9, 5)]),
        ("rware-tiny-2ag", [(9, 5, LEFTWARD), (9, 3, RIGHTWARD)], [FORWARD, FORWARD], [(9, 4), (9, 3)]),
        # ... unless the other has a longer chain behind it
        ("rware-tiny-4ag", [(9, 3, RIGHTWARD), (9, 5, LEFTWARD), (9, 6, LEFTWARD), (0, 0, UP)],
         [FORWARD, FORWARD, FORWARD, NOOP], [(9, 3), (9, 4), (9, 5), (0, 0)]),
        # into a robot that stays: no move; into the wall: no move
        ("rware-tiny-2ag", [(9, 4, RIGHTWARD), (9, 5, UP)], [FORWARD, LEFT], [(9, 4), (9, 5)]),
        ("rware-tiny-2ag", [(0, 0, UP), (10, 9, RIGHTWARD)], [FORWARD, FORWARD], [(0, 0), (10, 9)]),
        # four robots turning round a square all move (Jumanji would end the episode: a collision)
        ("rware-tiny-4ag", [(9, 4, RIGHTWARD), (9, 5, DOWN), (10, 5, LEFTWARD), (10, 4, UP)],
         [FORWARD] * 4, [(9, 5), (10, 5), (10, 4), (9, 4)]),
        # an unloaded robot drives under shelves
        ("rware-tiny-2ag", [(0, 1, DOWN), (9, 9, UP)], [FORWARD, FORWARD], [(1, 1), (8, 9)]),
    ],
)  # fmt: skip
def test_moves_follow_rware(env_id, start, actions, expected):
    raw = reference(env_id)
    with jax_env(env_id) as env:
        env.reset()
        set_state(env, start)
        step_both(env, raw, np.array(actions))
        assert cells(env) == expected
        step_both(env, raw, np.array([FORWARD] * len(start)))  # and one more step from there


def test_loaded_robots_shelves_and_following():
    raw = reference("rware-tiny-2ag")
    with jax_env("rware-tiny-2ag") as env:
        env.reset()
        s1, s2 = shelf_at(env, 8, 7), shelf_at(env, 8, 8)
        # a loaded robot facing a standing shelf does not move; the other, unloaded, drives under one
        set_state(env, [(0, 1, DOWN), (0, 2, DOWN)], {0: s1})
        step_both(env, raw, np.array([FORWARD, FORWARD]))
        assert cells(env) == [(0, 1), (1, 2)]
        # a loaded robot follows another loaded robot (Jumanji's mask forbids it: a shelf is there)
        set_state(env, [(9, 1, RIGHTWARD), (9, 2, RIGHTWARD)], {0: s1, 1: s2})
        step_both(env, raw, np.array([FORWARD, FORWARD]))
        assert cells(env) == [(9, 2), (9, 3)]
        assert (shelf_at(env, 9, 2), shelf_at(env, 9, 3)) == (s1, s2)  # the shelves moved with them
        # ... but not into a loaded robot that stays
        step_both(env, raw, np.array([FORWARD, NOOP]))
        assert cells(env) == [(9, 2), (9, 3)]


def test_load_noop_and_unload_follow_rware():
    """Load under a shelf, no-op while loaded on a shelf cell (Jumanji drops the shelf there), no unload
    on the highway, unload on a free shelf cell."""
    raw = reference("rware-tiny-2ag")
    with jax_env("rware-tiny-2ag") as env:
        env.reset()
        shelf = shelf_at(env, 1, 1)
        set_state(env, [(1, 1, UP), (9, 9, UP)])
        steps = [(TOGGLE_LOAD, (1, 1), 1), (NOOP, (1, 1), 1), (FORWARD, (0, 1), 1), (TOGGLE_LOAD, (0, 1), 1),
                 (RIGHT, (0, 1), 1), (RIGHT, (0, 1), 1), (FORWARD, (1, 1), 1), (TOGGLE_LOAD, (1, 1), 0),
                 (LEFT, (1, 1), 0), (LEFT, (1, 1), 0), (FORWARD, (0, 1), 0)]  # fmt: skip
        for action, cell, carrying in steps:
            step_both(env, raw, np.array([action, NOOP]))
            s = env.c.jax.device_get(env._state)
            assert (cells(env)[0], int(s.agents.is_carrying[0, 0])) == (cell, carrying), action
        assert shelf_at(env, 1, 1) == shelf  # back where it was


def test_delivery_rewards_the_delivering_robot_and_requests_another_shelf():
    raw = reference("rware-tiny-2ag")
    with jax_env("rware-tiny-2ag") as env:
        env.reset()
        s = env.c.jax.device_get(env._state)
        queue = s.request_queue[0].tolist()
        set_state(env, [(0, 0, UP), (9, 4, DOWN)], {1: queue[1]})
        _, reward, _, _, info = step_both(env, raw, np.array([NOOP, FORWARD]))
        np.testing.assert_array_equal(info["agent_rewards"][0], [0.0, 1.0])  # robot 1's own (Jumanji: shared)
        assert reward[0] == 1.0 and cells(env)[1] == (10, 4)
        new = env.c.jax.device_get(env._state).request_queue[0].tolist()
        assert new[0] == queue[0] and new[1] not in queue  # a new request in the delivered one's slot
        _, reward, _, _, info = step_both(env, raw, np.array([NOOP, NOOP]))  # delivered once only
        assert reward[0] == 0.0


# ------------------------------------------------------------------------------- the spawn
@pytest.mark.parametrize("env_id", ["rware-tiny-4ag", "rware-small-4ag"])
def test_spawn_draws_rwares_start_distribution(env_id):
    n = 2000
    with jax_env(env_id) as env:
        jax = env.c.jax
        s = jax.device_get(jax.jit(jax.vmap(env.c.spawn))(jax.random.split(jax.random.key(0), n)))
    fast = (s.agents.position.x, s.agents.position.y, RWARE_DIRECTION[s.agents.direction],
            s.shelves.position.x[np.arange(n)[:, None], s.request_queue],
            s.shelves.position.y[np.arange(n)[:, None], s.request_queue])  # fmt: skip
    highway = s.grid[0, 0] == 0  # no shelf stands there at the start
    raw, ref = reference(env_id), ([], [], [], [], [])
    for k in range(n):
        raw.reset(seed=k)
        for values, column in zip(ref, [[r.y for r in raw.agents], [r.x for r in raw.agents],
                                        [r.dir.value for r in raw.agents], [q.y for q in raw.request_queue],
                                        [q.x for q in raw.request_queue]]):  # fmt: skip
            values.append(column)
    ref = tuple(np.array(x) for x in ref)
    for rows, cols, _, req_rows, req_cols in (fast, ref):
        assert all(len(set(zip(r, c))) == len(r) for r, c in zip(rows, cols))  # distinct cells
        assert all(len(set(zip(r, c))) == len(r) for r, c in zip(req_rows, req_cols))  # distinct requests
        assert not highway[req_rows, req_cols].any()  # requests are shelves

    def stats(rows, cols, dirs, req_rows, req_cols):
        return {"robot row": rows, "robot col": cols, "robot on highway": highway[rows, cols],
                "robot up": dirs == 0, "robot down": dirs == 1, "robot left": dirs == 2,
                "request row": req_rows, "request col": req_cols}  # fmt: skip

    a, b = stats(*fast), stats(*ref)
    for name in a:
        x, y = a[name].reshape(n, -1).mean(1), b[name].reshape(n, -1).mean(1)
        se = np.sqrt(x.var() / n + y.var() / n)
        assert abs(x.mean() - y.mean()) < 4 * se + 1e-9, (name, x.mean(), y.mean(), se)


if __name__ == "__main__":  # how often rware's hash-ordered tie occurs: python tests/test_env_rware_jax.py ID STEPS
    import sys

    env_id, steps = sys.argv[1], int(sys.argv[2])
    rng, raw, ties, found, delivered = np.random.default_rng(0), reference(sys.argv[1]), [], 0, 0.0
    with jax_env(env_id) as env:
        env.reset()
        for _ in range(steps):
            actions = rng.integers(0, 5, (E, env.n_agents))  # the random policy
            before = env.c.jax.device_get(env._state)
            for e in range(E):
                copy_state(raw, before, e)
                found += set_order_tie(raw, actions[e])
            delivered += step_and_check(env, raw, actions, ties=ties)[1].sum()
    print(f"{env_id}: {steps * E} steps, {delivered:.0f} deliveries, {found} with the tie, {len(ties)} differ")
