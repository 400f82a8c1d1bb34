"""Tests of mat.py: the decoder's shift and causal mask, inference vs training pass, the joint advantage,
and learning on the climbing game (MAT and MAT-Dec)."""

import pytest
import torch

import mat


def make_model(n_agents=4, discrete=True, act_size=5, in_dim=6, dec=False, seed=0):
    """A MAT with large random weights (the paper's init scales heads by 0.01, which hides dependencies)."""
    torch.manual_seed(seed)
    args = mat.Args(n_embd=16, n_head=2, n_block=2, dec=dec)
    model = mat.MultiAgentTransformer(in_dim, n_agents, discrete, act_size, args)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    return model.eval()


# --------------------------------------------------------------------------------- the shift
def test_shift_right_discrete():
    # 3 agents, 3 actions, actions (0, 2, 1): tokens one-hot, shifted one agent right behind a start flag
    model = make_model(n_agents=3, act_size=3)
    tokens = model.tokens(torch.tensor([[0, 2, 1]]), None)
    expected = torch.tensor(
        [[[1.0, 0, 0, 0],  # agent 0: the start token
          [0.0, 1, 0, 0],  # agent 1: (0, one-hot(a0 = 0))
          [0.0, 0, 0, 1]]]  # agent 2: (0, one-hot(a1 = 2)); a2 = 1 is never an input
    )  # fmt: skip
    assert torch.equal(mat.shift_right(tokens), expected)


def test_shift_right_continuous():
    # 3 agents, act_dim 2, agent 1 has only one real dimension (its second one is padding)
    model = make_model(n_agents=3, discrete=False, act_size=2)
    actions = torch.tensor([[[0.5, -1.0], [2.0, 0.3], [7.0, 8.0]]])
    act_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    expected = torch.tensor(
        [[[1.0, 0.0, 0.0],  # start token (1, 0, 0)
          [0.0, 0.5, -1.0],  # (0, a0)
          [0.0, 2.0, 0.0]]]  # (0, a1) with a1's padded dimension zeroed
    )  # fmt: skip
    assert torch.equal(mat.shift_right(model.tokens(actions, act_mask)), expected)


# ---------------------------------------------------------------------------- the causal mask
@pytest.mark.parametrize("discrete", [True, False])
def test_policy_of_agent_m_ignores_actions_of_agents_m_and_later(discrete):
    N, A, B = 4, 3, 5
    model = make_model(n_agents=N, discrete=discrete, act_size=A)
    obs = torch.randn(B, N, 6)
    act_mask = None if discrete else torch.ones(N, A)
    new_actions = lambda: torch.randint(0, A, (B, N)) if discrete else torch.randn(B, N, A)
    actions = new_actions()
    with torch.no_grad():
        _, rep = model.encode(obs)
        out = model.decode(mat.shift_right(model.tokens(actions, act_mask)), rep)
        for m in range(N):
            changed = actions.clone()
            changed[:, m:] = new_actions()[:, m:]
            if discrete:  # make sure every action of agents >= m really changes
                changed[:, m:] = (actions[:, m:] + 1 + changed[:, m:] % (A - 1)) % A
            out2 = model.decode(mat.shift_right(model.tokens(changed, act_mask)), rep)
            # agents 0..m see only a^{0..m-1}, which did not change
            torch.testing.assert_close(out2[:, : m + 1], out[:, : m + 1], rtol=0, atol=1e-6)
            if m + 1 < N:  # agent m+1 sees a^m, which changed
                assert (out2[:, m + 1] - out[:, m + 1]).abs().max() > 1e-3


# ------------------------------------------------------- inference pass vs training pass
@pytest.mark.parametrize("dec", [False, True])
@pytest.mark.parametrize("discrete", [True, False])
def test_autoregressive_and_parallel_log_probs_agree(discrete, dec):
    N, A, B = 3, 4, 64
    model = make_model(n_agents=N, discrete=discrete, act_size=A, dec=dec)
    obs = torch.randn(B, N, 6)
    if discrete:
        avail = torch.rand(B, N, A) > 0.4
        avail[..., 0] = True  # at least one available action
        act_mask = None
    else:
        avail = None
        act_mask = torch.tensor([[1.0, 1, 1, 1], [1.0, 1, 0, 0], [1.0, 1, 1, 0]])  # heterogeneous: 4, 2, 3 dims
    torch.manual_seed(1)
    for deterministic in (False, True):
        actions, logp, values = model.act(obs, avail, act_mask, deterministic)
        with torch.no_grad():
            logp2, entropy, values2 = model.evaluate(obs, avail, act_mask, actions)
        torch.testing.assert_close(logp2, logp, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(values2, values)
        assert entropy.shape == (B, N)
        if discrete:  # only available actions are taken
            assert torch.gather(avail, 2, actions[..., None]).all()


def test_padded_action_dims_do_not_count():
    # an agent with one real dimension: the log-prob of its action ignores the padded dimension
    model = make_model(n_agents=2, discrete=False, act_size=2)
    act_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    obs = torch.randn(1, 2, 6)
    a = torch.tensor([[[0.1, 0.2], [0.3, 0.0]]])
    b = a.clone()
    b[0, 1, 1] = 5.0  # change only agent 1's padded dimension
    with torch.no_grad():
        logp_a, ent_a, _ = model.evaluate(obs, None, act_mask, a)
        logp_b, ent_b, _ = model.evaluate(obs, None, act_mask, b)
    torch.testing.assert_close(logp_a, logp_b)
    torch.testing.assert_close(ent_a, ent_b)


# --------------------------------------------------------------------- the joint advantage
def test_joint_value_is_the_mean_over_alive_agents():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [1.0, 2.0, 6.0]])
    alive = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    # (1+2+3)/3 = 2; agent 1 dead: (4+6)/2 = 5; nobody alive: plain mean (1+2+6)/3 = 3
    torch.testing.assert_close(mat.joint_value(values, alive), torch.tensor([2.0, 5.0, 3.0]))


def test_joint_advantage_by_hand():
    # one env, two steps, two agents; the episode is truncated after step 1
    gamma, lam = 0.5, 0.5
    values = torch.tensor([[[1.0, 3.0]], [[4.0, 6.0]]])  # [T=2, E=1, n=2]: V̂_0 = 2, V̂_1 = 5
    next_values = torch.tensor([[[4.0, 6.0]], [[0.0, 2.0]]])  # V(final_obs) after step 1: V̂ = 1
    alive = torch.ones(2, 1, 2, dtype=torch.bool)
    rewards = torch.tensor([[1.0], [2.0]])
    terminated = torch.zeros(2, 1, dtype=torch.bool)
    dones = torch.tensor([[False], [True]])
    v_hat, next_v_hat = mat.joint_value(values, alive), mat.joint_value(next_values, alive)
    adv = mat.gae(rewards, v_hat, next_v_hat, terminated, dones, gamma, lam)
    # t=1: δ = 2 + 0.5 * 1 - 5 = -2.5 (bootstrap on truncation), Â_1 = -2.5
    # t=0: δ = 1 + 0.5 * 5 - 2 = 1.5, Â_0 = 1.5 + 0.5 * 0.5 * (-2.5) = 0.875
    torch.testing.assert_close(adv, torch.tensor([[0.875], [-2.5]]))
    # GAE is linear in the values: with everyone alive, Â equals the mean of the per-agent advantages
    per_agent = mat.gae(rewards, values, next_values, terminated, dones, gamma, lam)
    torch.testing.assert_close(per_agent.mean(-1), adv)
    # terminated instead of truncated: no bootstrap, δ_1 = 2 - 5 = -3, Â_0 = 1.5 + 0.25 * (-3) = 0.75
    adv_term = mat.gae(rewards, v_hat, next_v_hat, dones, dones, gamma, lam)
    torch.testing.assert_close(adv_term, torch.tensor([[0.75], [-3.0]]))


def test_value_norm_round_trip():
    norm = mat.ValueNorm()
    x = torch.tensor([1.0, 5.0, 9.0])
    norm.update(x)
    mean, var = norm.mean_var()
    # the first update is fully debiased: mean 5, var = (1 + 25 + 81)/3 - 25 = 10.67
    torch.testing.assert_close(mean, torch.tensor(5.0))
    torch.testing.assert_close(var, torch.tensor(107 / 3 - 25))
    torch.testing.assert_close(norm.denormalize(norm.normalize(x)), x)


# ------------------------------------------------------------------------------- learning
# default update settings (lr 5e-4, 10 epochs, 1 minibatch), a small batch of 8 envs x 10 steps;
# about 15 s of CPU time for MAT, 5 s for MAT-Dec. Over seeds 1-12 (CPU) MAT reaches the optimum 11
# in 7 of 12 runs of 3,200 steps (the others settle at 7 or 6; 9,600 steps got one of four of them out);
# MAT-Dec reaches it in 0 of 12 runs of 3,200 steps (7 or 6). Commands: docs/mat.md.
CLIMBING = dict(env_id="matrix-climbing", num_envs=8, num_steps=10, eval_episodes=8, save_model=False)


@pytest.mark.slow
def test_mat_learns_climbing_game(tmp_path, monkeypatch):
    # a uniformly random joint policy scores -31/9 = -3.44; MAT-Dec settles at 7 or 6 (below);
    # MAT's second agent conditions on the first one's action and the pair can reach the optimum 11.
    # Seeds are tried in turn (seed 1 reaches it on the CPU; on a GPU the random streams differ)
    monkeypatch.chdir(tmp_path)
    returns = []
    for seed in (1, 2, 3):
        result = mat.train(mat.Args(seed=seed, total_timesteps=3_200, **CLIMBING))
        returns.append(result["eval_return"])
        if result["eval_return"] == 11.0:
            assert result["episodic_return"] > 8.0
            return
    pytest.fail(f"MAT did not reach the optimum 11 with seeds 1, 2, 3: greedy returns {returns}")


@pytest.mark.slow
def test_mat_dec_learns_climbing_game(tmp_path, monkeypatch):
    # MAT-Dec (no action dependency) goes from random (-3.44) to a coordinated joint action; like
    # independent learners it settles at 7 or 6 (seeds 1, 2, 3), not at MAT's 11
    monkeypatch.chdir(tmp_path)
    result = mat.train(mat.Args(seed=1, total_timesteps=1_600, dec=True, **CLIMBING))
    assert result["eval_return"] >= 5.0


def test_value_of_a_dead_agent_is_learned(tmp_path, monkeypatch):
    """An agent's per-agent value target at its last living step bootstraps from its value after
    death (the team's return to come), so that value must be learned, as in the other on-policy
    files (test_on_policy.py). Left out of the value loss, it stayed whatever the encoder
    extrapolated."""
    from tests.test_on_policy import DyingTeammateEnv

    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    monkeypatch.setattr(
        mat.envs, "make", lambda env_id, num_envs=1, seed=None, **kw: DyingTeammateEnv(num_envs=num_envs)
    )
    args = mat.Args(  # a valid env id for the argument checks; envs.make returns the game above
        env_id="matrix-climbing", seed=1, num_envs=2, num_steps=10, total_timesteps=1000, eval_episodes=1,
    )  # fmt: skip
    ckpt = torch.load(mat.train(args)["model_path"], weights_only=False)
    env = DyingTeammateEnv()
    inputs = mat.Inputs(env, args.add_agent_id, "cpu")
    model = mat.MultiAgentTransformer(inputs.in_dim, 2, True, inputs.act_size, args)
    model.load_state_dict(ckpt["model"])
    value_norm = mat.ValueNorm()
    value_norm.load_state_dict(ckpt["value_norm"])
    dead_values = []
    for t in range(env.DEATH, 10):
        env.t = t
        with torch.no_grad():
            dead_values.append(value_norm.denormalize(model.encode(inputs.obs(env._batch()["obs"]))[0])[0, 1].item())
    returns_to_come = [sum(0.99**k for k in range(10 - t)) for t in range(env.DEATH, 10)]
    # learned (seed 1): 2.96 against 2.96; with the value loss over alive agents only: 7.44
    assert sum(dead_values) / 5 == pytest.approx(sum(returns_to_come) / 5, abs=0.5)
