"""HAPPO (happo.py): the multi-agent advantage decomposition, the HAPPO-clip loss, GAE, and learning.

The M factor chain, the per-agent "FP" critic and the product-game learning test are the same
for happo.py and hatrpo.py; they are tested here for both (the chain holds one column of M per
agent, for the per-agent critic values).
"""

import math

import pytest
import torch

import happo
import hatrpo


@pytest.mark.parametrize("algo", [happo, hatrpo], ids=["happo", "hatrpo"])
def test_m_factor_chain_over_a_permutation_of_three_agents(algo):
    # permutation i_1:3 = (2, 0, 1); two samples; A = [1, -2]
    # new/old ratios after each agent's update: agent 2 -> [2, 0.5], agent 0 -> [0.5, 3], agent 1 -> [4, 4]
    ratios = {2: torch.tensor([2.0, 0.5]), 0: torch.tensor([0.5, 3.0]), 1: torch.tensor([4.0, 4.0])}
    seen = []
    A = torch.tensor([1.0, -2.0]).unsqueeze(1).repeat(1, 3)  # one column per agent, each the team's A

    def update_agent(i, M):
        seen.append((i, M[:, i].clone()))
        return ratios[i]

    M_last = algo.sequential_update([2, 0, 1], A, update_agent)[:, 0]
    assert [i for i, _ in seen] == [2, 0, 1]
    # M^{i_1} = A = [1, -2]
    torch.testing.assert_close(seen[0][1], torch.tensor([1.0, -2.0]))
    # M^{i_1:2} = r^2 A = [2 * 1, 0.5 * -2] = [2, -1]
    torch.testing.assert_close(seen[1][1], torch.tensor([2.0, -1.0]))
    # M^{i_1:3} = r^0 r^2 A = [0.5 * 2, 3 * -1] = [1, -3]
    torch.testing.assert_close(seen[2][1], torch.tensor([1.0, -3.0]))
    # after the last agent: [4 * 1, 4 * -3] = [4, -12]
    torch.testing.assert_close(M_last, torch.tensor([4.0, -12.0]))


@pytest.mark.parametrize("algo", [happo, hatrpo], ids=["happo", "hatrpo"])
def test_m_factor_chain_with_per_agent_advantages(algo):
    # --state-type FP: agent i is updated against its own A^i; the ratios scale every column.
    # order (2, 0, 1), ratios as above; columns A^0 = [1, -2], A^1 = [3, 1], A^2 = [-1, 4]
    ratios = {2: torch.tensor([2.0, 0.5]), 0: torch.tensor([0.5, 3.0]), 1: torch.tensor([4.0, 4.0])}
    seen = {}

    def update_agent(i, M):
        seen[i] = M[:, i].clone()
        return ratios[i]

    A = torch.tensor([[1.0, 3.0, -1.0], [-2.0, 1.0, 4.0]])
    M_last = algo.sequential_update([2, 0, 1], A, update_agent)
    torch.testing.assert_close(seen[2], torch.tensor([-1.0, 4.0]))  # A^2
    torch.testing.assert_close(seen[0], torch.tensor([2.0, -1.0]))  # r^2 A^0 = [2 * 1, 0.5 * -2]
    torch.testing.assert_close(seen[1], torch.tensor([3.0, 1.5]))  # r^0 r^2 A^1 = [0.5 * 2 * 3, 3 * 0.5 * 1]
    # after the last agent, row 0 scaled by 0.5 * 2 * 4 = 4 and row 1 by 3 * 0.5 * 4 = 6
    torch.testing.assert_close(M_last, torch.tensor([[4.0, 12.0, -4.0], [-12.0, 6.0, 24.0]]))


@pytest.mark.parametrize("algo", [happo, hatrpo], ids=["happo", "hatrpo"])
def test_fp_critic_gives_one_value_per_agent_from_state_obs_and_id(algo):
    import envs

    env = envs.make("smax-3m", num_envs=2, seed=0)
    batch = env.reset()
    env.close()
    state, obs = torch.as_tensor(batch["state"]), torch.as_tensor(batch["obs"])
    ep = algo.HAAgents(env, algo.Args(state_type="EP"))
    fp = algo.HAAgents(env, algo.Args(state_type="FP"))
    assert ep.value(state, obs).shape == (2,)
    assert fp.critic[0][0].normalized_shape == (env.state_dim + env.obs_dim + env.n_agents,)
    values = fp.value(state, obs)
    assert values.shape == (2, env.n_agents)
    # the same state and observation under another agent id is another input
    same_obs = obs[:, :1].expand(-1, env.n_agents, -1)
    assert not torch.allclose(fp.value(state, same_obs)[:, 0], fp.value(state, same_obs)[:, 1])


def test_hidden_norm_switches_the_layernorms_between_hidden_layers():
    import envs

    env = envs.make("matrix-climbing", num_envs=1)
    count = lambda agents: sum(isinstance(m, torch.nn.LayerNorm) for m in agents.modules())  # noqa: E731
    # 2 actors + 1 critic, each: input LayerNorm + one after each of the 2 hidden layers
    assert count(happo.HAAgents(env, happo.Args())) == 9
    assert count(happo.HAAgents(env, happo.Args(hidden_norm=False))) == 3


def test_happo_policy_loss_clips_the_m_weighted_ratio():
    # eps = 0.2; samples (r, M): (1.5, 2) -> min(3, 1.2 * 2 = 2.4) = 2.4
    #                            (0.5, -1) -> min(-0.5, 0.8 * -1 = -0.8) = -0.8
    #                            (1.0, 3) but dead -> left out
    ratio = torch.tensor([1.5, 0.5, 1.0])
    M = torch.tensor([2.0, -1.0, 3.0])
    alive = torch.tensor([True, True, False])
    loss = happo.happo_policy_loss(ratio, M, alive, clip_coef=0.2)
    assert loss.item() == pytest.approx(-(2.4 - 0.8) / 2)


@pytest.mark.parametrize("state_type", ["EP", "FP"])
def test_value_clip_window_is_centred_on_the_critics_rollout_output(state_type, tmp_path, monkeypatch):
    """The clipped value loss clips around V_old = the critic's (normalised) output in the rollout,
    so in the first critic minibatch, before any critic step, V_old equals the critic's output on
    the same samples. Re-normalising the old values with the ValueNorm statistics updated by this
    rollout's returns (the code before issue 51) moves the centre off it."""
    monkeypatch.chdir(tmp_path)
    calls, value_loss = [], happo.value_loss

    def recording_value_loss(new_v, old_v, *rest):
        calls.append((new_v.detach().clone(), old_v.clone()))
        return value_loss(new_v, old_v, *rest)

    monkeypatch.setattr(happo, "value_loss", recording_value_loss)
    happo.train(happo.Args(
        env_id="product-game", num_envs=4, num_steps=5, total_timesteps=20, critic_epochs=2, update_epochs=1,
        eval_interval=0, eval_episodes=1, save_model=False, state_type=state_type,
    ))  # fmt: skip
    assert len(calls) == 2  # 2 epochs of one minibatch
    new_v, old_v = calls[0]
    assert old_v.shape == new_v.shape == ((20,) if state_type == "EP" else (20, 2))
    torch.testing.assert_close(old_v, new_v)
    assert not torch.allclose(calls[1][0], calls[1][1])  # the critic has moved since


def test_gae_bootstraps_only_within_episodes():
    # T = 2, one env, gamma = 0.5, lambda = 1: r = [1, 2], V = [0.5, 1], V(s_2) = 4
    # episode ends at t = 0: A_0 = 1 - 0.5 = 0.5; A_1 = 2 + 0.5 * 4 - 1 = 3
    adv, ret = happo.compute_gae(
        torch.tensor([[1.0], [2.0]]), torch.tensor([[0.5], [1.0]]), torch.tensor([[1.0], [0.0]]),
        torch.tensor([4.0]), gamma=0.5, gae_lambda=1.0,
    )  # fmt: skip
    torch.testing.assert_close(adv, torch.tensor([[0.5], [3.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0], [4.0]]))


def test_probability_ratio_is_one_for_dead_agents():
    import envs

    env = envs.make("matrix-climbing", num_envs=1)
    agents = happo.HAAgents(env, happo.Args())
    data = {
        "obs": torch.ones(2, 2, 1), "avail": torch.ones(2, 2, 3, dtype=torch.bool),
        "act": torch.zeros(2, 2, dtype=torch.long), "logp": torch.full((2, 2), math.log(0.5)),
        "alive": torch.tensor([[True, True], [False, True]]),
    }  # fmt: skip
    # the untrained policy is ~uniform (p ~ 1/3): ratio ~ (1/3) / 0.5 on the alive sample, 1 on the dead one
    r = happo.probability_ratio(agents, 0, data)
    assert r[0].item() == pytest.approx(2 / 3, abs=0.02) and r[1].item() == 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "algo,step_size",
    [
        (happo, {"learning_rate": 0.03}),
        (happo, {"learning_rate": 0.03, "state_type": "FP"}),
        (hatrpo, {"kl_threshold": 0.05}),
        (hatrpo, {"kl_threshold": 0.05, "state_type": "FP"}),
    ],
    ids=["happo", "happo-fp", "hatrpo", "hatrpo-fp"],
)
def test_learns_product_game_from_the_lectures_initialisation(algo, step_size, tmp_path, monkeypatch):
    # The lecture's example: Gaussian means start at -0.25 and 0.25, so the untrained joint return
    # is about -0.25 * 0.25 = -0.06; the optimum is 4 at (2, 2) or (-2, -2).
    # Measured (seed 1): eval return 4.00 after 10,000 steps (50 iterations), ~15 s on one core;
    # happo and hatrpo with --state-type FP (per-agent values): 4.00 for seeds 1, 2 and 3.
    monkeypatch.chdir(tmp_path)
    result = algo.train(
        algo.Args(
            seed=1, env_id="product-game", init_mean=(-0.25, 0.25), num_envs=100, num_steps=2,
            total_timesteps=10_000, eval_interval=0, eval_episodes=20, save_model=False, **step_size,
        )
    )  # fmt: skip
    assert result["eval_return"] > 3.5
    assert result["episodic_return"] > 3.5


# ------------------------------------------------------------------------ happo_rnn.py (issue 48)
def test_rnn_m_factor_is_the_product_of_ratios_replayed_on_chunks(tmp_path, monkeypatch):
    """happo_rnn.py on memory-cue (episodes of 4 steps: starts inside the chunks of 10): before
    agent i_m's update, replaying its chunks from the stored hidden states gives back the rollout's
    log-probs (ratio 1 on every sample); agent i_m is updated against M^{i_1:m} = A times the
    replayed ratios of the agents updated before it."""
    import happo_rnn

    monkeypatch.chdir(tmp_path)
    seen, update_agent = [], happo_rnn.update_agent

    def recording_update_agent(agents, optims, data, args, stats, i, M):
        before = happo_rnn.probability_ratio(agents, i, data)
        ratio = update_agent(agents, optims, data, args, stats, i, M)
        seen.append((M[..., i].clone(), before, ratio))
        return ratio

    monkeypatch.setattr(happo_rnn, "update_agent", recording_update_agent)
    happo_rnn.train(happo_rnn.Args(
        env_id="memory-cue", num_envs=2, num_steps=20, chunk_length=10, total_timesteps=40, learning_rate=0.01,
        eval_interval=0, eval_episodes=1, save_model=False,
    ))  # fmt: skip
    assert len(seen) == 2  # one iteration, two agents
    A, product = seen[0][0], torch.ones_like(seen[0][0])
    for M, before, ratio in seen:
        assert M.shape == (10, 4)  # [chunk_length, chunks]: 2 envs x 20 steps in chunks of 10
        torch.testing.assert_close(M, product * A)
        torch.testing.assert_close(before, torch.ones_like(before), atol=1e-5, rtol=0)
        assert not torch.allclose(ratio, torch.ones_like(ratio), atol=1e-3)  # the update moved the policy
        product = product * ratio


def test_rnn_probability_ratio_is_one_for_dead_agents():
    import envs
    import happo_rnn

    env = envs.make("matrix-climbing", num_envs=1)
    agents = happo_rnn.HAAgents(env, happo_rnn.Args())
    L, C, N = 2, 1, 2  # one chunk of 2 steps
    data = {
        "obs": torch.ones(L, C, N, 1), "avail": torch.ones(L, C, N, 3, dtype=torch.bool),
        "act": torch.zeros(L, C, N, dtype=torch.long), "logp": torch.full((L, C, N), math.log(0.5)),
        "alive": torch.tensor([[[True, True]], [[False, True]]]), "starts": torch.ones(L, C),
        "h0": torch.zeros(C, N, agents.rnn_hidden_dim),
    }  # fmt: skip
    # the untrained policy is ~uniform (p ~ 1/3): ratio ~ (1/3) / 0.5 on the alive sample, 1 on the dead one
    r = happo_rnn.probability_ratio(agents, 0, data)
    assert r.shape == (L, C)
    assert r[0, 0].item() == pytest.approx(2 / 3, abs=0.02) and r[1, 0].item() == 1.0


def test_rnn_fp_critic_keeps_one_hidden_state_per_agent_and_replays_on_chunks():
    """--state-type FP: V(s, o^i, i) with a hidden state per agent; stepping through a rollout gives
    the values that the chunks give from the stored hidden states (the critic's training input)."""
    import envs
    import happo_rnn

    torch.manual_seed(0)
    env = envs.make("smax-3m", num_envs=1, seed=0)
    env.close()
    agents = happo_rnn.HAAgents(env, happo_rnn.Args(state_type="FP"))
    T, E, N, L = 6, 2, env.n_agents, 3
    state, obs = torch.randn(T, E, env.state_dim), torch.randn(T, E, N, env.obs_dim)
    starts = torch.zeros(T, E)
    starts[0], starts[4, 1] = 1.0, 1.0  # env 1's second episode starts inside the second chunk
    h = agents.critic_hidden(E, "cpu")
    assert h.shape == (E, N, agents.rnn_hidden_dim)
    h_buf, values = [], []
    with torch.no_grad():
        for t in range(T):
            h_buf.append(h)
            v, h = agents.value(state[t][None], obs[t][None], h, starts[t][None])
            values.append(v[0])
        chunk = happo_rnn.to_chunks
        c_values, _ = agents.value(chunk(state, L), chunk(obs, L), chunk(torch.stack(h_buf), L)[0], chunk(starts, L))
    assert c_values.shape == (L, T // L * E, N)
    torch.testing.assert_close(c_values, chunk(torch.stack(values), L), atol=1e-5, rtol=0)
    assert not torch.allclose(values[1][:, 0], values[1][:, 1])  # each agent its own value


def test_rnn_checkpoint_keeps_its_network_sizes(tmp_path, monkeypatch):
    """A model trained with other widths than the defaults evaluates with the default flags: the GRU's
    width and the layers' come from the checkpoint (else the weights would not fit)."""
    import happo_rnn

    monkeypatch.chdir(tmp_path)
    small = dict(env_id="memory-cue", num_envs=2, num_steps=10, chunk_length=5, eval_interval=0, eval_episodes=2)
    trained = happo_rnn.train(happo_rnn.Args(**small, total_timesteps=20, rnn_hidden_dim=8, hidden_dim=16))
    saved = torch.load(trained["model_path"], weights_only=False)
    assert saved["args"]["rnn_hidden_dim"] == 8 and saved["algo"] == "happo_rnn"
    reloaded = happo_rnn.train(happo_rnn.Args(**small, checkpoint=trained["model_path"]))
    assert reloaded["global_step"] == 0 and math.isfinite(reloaded["eval_return"])
