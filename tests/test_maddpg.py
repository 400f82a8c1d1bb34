"""maddpg.py: Gumbel-softmax straight-through estimator, Polyak update, TD target, replay buffer, learning."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import maddpg


def test_gumbel_softmax_straight_through_forward_is_one_hot_and_respects_mask():
    torch.manual_seed(0)
    logits = torch.randn(1000, 3, 5) * 3
    avail = torch.rand(1000, 3, 5) < 0.5
    avail[..., 2] = True  # at least one available action per agent
    y = maddpg.gumbel_softmax_st(logits, avail)
    # exactly one-hot (no 1 - p + p rounding): entries are exactly 0.0 or 1.0, one 1.0 per row
    assert torch.all((y == 0.0) | (y == 1.0))
    assert torch.all(y.sum(-1) == 1.0)
    assert not torch.any(y.bool() & ~avail)  # never an unavailable action
    # unmasked logits: samples follow softmax(logits) (Gumbel-max trick), here for logits log(0.5, 0.3, 0.2)
    p = torch.tensor([0.5, 0.3, 0.2])
    y = maddpg.gumbel_softmax_st(p.log().expand(20000, 3), torch.ones(20000, 3, dtype=torch.bool))
    assert torch.allclose(y.mean(0), p, atol=0.015)


def test_gumbel_softmax_straight_through_backward_is_soft_gradient():
    # logits (1, 2, 0, 3) with action 3 unavailable, noise g = 0, temperature T = 2:
    # soft = softmax((1, 2, 0, -1e10) / 2) = e^(0.5, 1, 0, -inf) / (e^0.5 + e + 1)
    #      = (1.6487, 2.7183, 1, 0) / 5.3670 = (0.30720, 0.50648, 0.18632, 0); forward one-hot at action 1
    logits = torch.tensor([1.0, 2.0, 0.0, 3.0], requires_grad=True)
    avail = torch.tensor([True, True, True, False])
    w = torch.tensor([1.0, -2.0, 3.0, 5.0])  # loss = w . y
    y = maddpg.gumbel_softmax_st(logits, avail, temperature=2.0, gumbel_noise=torch.zeros(4))
    assert torch.equal(y, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    (y * w).sum().backward()
    # d(w . soft)/d logits_k = soft_k (w_k - w . soft) / T, w . soft = 0.30720 - 1.01296 + 0.55896 = -0.14680
    # -> (0.30720 * 1.14680, 0.50648 * -1.85320, 0.18632 * 3.14680, 0) / 2 = (0.17615, -0.46930, 0.29316, 0)
    assert torch.allclose(logits.grad, torch.tensor([0.17615, -0.46930, 0.29316, 0.0]), atol=1e-4)
    # identical to the gradient of the soft sample itself
    logits2 = logits.detach().clone().requires_grad_(True)
    soft = torch.softmax(logits2.masked_fill(~avail, -1e10) / 2.0, -1)
    (soft * w).sum().backward()
    assert torch.allclose(logits.grad, logits2.grad, atol=1e-7)


def test_greedy_one_hot_skips_unavailable():
    logits = torch.tensor([[5.0, 1.0, 2.0]])
    avail = torch.tensor([[False, True, True]])
    assert torch.equal(maddpg.greedy_one_hot(logits, avail), torch.tensor([[0.0, 0.0, 1.0]]))


def test_polyak_update_hand_computed():
    online, target = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
        online.bias.fill_(-4.0)
        target.weight.copy_(torch.tensor([[3.0, 0.0]]))
        target.bias.fill_(10.0)
    maddpg.polyak_update(target, online, tau=0.1)
    # 0.1 * 1 + 0.9 * 3 = 2.8; 0.1 * 2 + 0.9 * 0 = 0.2; 0.1 * -4 + 0.9 * 10 = 8.6
    assert torch.allclose(target.weight, torch.tensor([[2.8, 0.2]]))
    assert torch.allclose(target.bias, torch.tensor([8.6]))
    assert torch.equal(online.weight, torch.tensor([[1.0, 2.0]]))  # online untouched
    maddpg.polyak_update(target, online, tau=1.0)  # tau = 1: hard copy
    assert torch.equal(target.weight, online.weight)


def test_td_target_termination_vs_truncation():
    # three transitions with r = (1, 2, -1), next Q' for 2 agents:
    # row 0 terminated:       y = 1                         (no bootstrap)
    # row 1 truncated only:   y = 2 + 0.9 * (5, 6) = (6.5, 7.4)   (bootstraps from the final obs)
    # row 2 ongoing:          y = -1 + 0.9 * (-2, 0) = (-2.8, -1)
    reward = torch.tensor([1.0, 2.0, -1.0])
    terminated = torch.tensor([1.0, 0.0, 0.0])
    next_q = torch.tensor([[100.0, 100.0], [5.0, 6.0], [-2.0, 0.0]])
    y = maddpg.td_target(reward, terminated, next_q, gamma=0.9)
    assert torch.allclose(y, torch.tensor([[1.0, 1.0], [6.5, 7.4], [-2.8, -1.0]]))


def test_joint_actions_for_actor_loss_gradient_only_through_own_action():
    u_pi = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], requires_grad=True)  # [B=1, N=2, A=2]
    others = torch.tensor([[[-1.0, -2.0], [-3.0, -4.0]]])
    joint = maddpg.joint_actions_for_actor_loss(u_pi, others)
    # critic 0 sees (mu_0, u_1), critic 1 sees (u_0, mu_1)
    assert torch.equal(joint, torch.tensor([[[1.0, 2.0, -3.0, -4.0], [-1.0, -2.0, 3.0, 4.0]]]))
    joint.sum().backward()
    assert torch.equal(u_pi.grad, torch.ones(1, 2, 2))  # each own action used once


def test_replay_buffer_wraps_around():
    rb = maddpg.ReplayBuffer(5, {"x": (2,), "r": ()}, {}, seed=0)
    rb.add(x=np.arange(6, dtype=np.float32).reshape(3, 2), r=np.array([0, 1, 2]))  # rows 0, 1, 2
    assert (rb.pos, rb.size) == (3, 3)
    rb.add(x=np.full((4, 2), 7, np.float32), r=np.array([3, 4, 5, 6]))  # rows 3, 4, then 0, 1 (overwritten)
    assert (rb.pos, rb.size) == (2, 5)
    assert rb.data["r"].tolist() == [5, 6, 2, 3, 4]
    assert rb.data["x"][2].tolist() == [4.0, 5.0] and rb.data["x"][0].tolist() == [7.0, 7.0]
    sample = rb.sample(100, "cpu")
    assert sample["r"].shape == (100,) and set(sample["r"].tolist()) <= {2.0, 3.0, 4.0, 5.0, 6.0}


def test_running_mean_std_hand_computed():
    # values 1, 3 then 5: mean 3, variance ((1-3)^2 + 0 + (5-3)^2) / 3 = 8/3 (up to the 1e-4 prior count)
    stats = maddpg.RunningMeanStd()
    stats.update(np.array([1.0, 3.0]))
    assert stats.mean == pytest.approx(2.0, abs=1e-3) and stats.var == pytest.approx(1.0, abs=1e-3)
    stats.update(np.array([5.0]))
    assert stats.mean == pytest.approx(3.0, abs=1e-3) and stats.var == pytest.approx(8 / 3, abs=1e-3)


def test_per_agent_networks_run_on_true_sizes():
    # heterogeneous agents (obs 2 and 3, actions 1 and 2): padded inputs do not change agent 0's output
    net = maddpg.AgentNets(2, [2, 3], [1, 2], hidden=8, share=False, out_std=1.0)
    x = torch.randn(4, 2, 3)
    x[:, 0, 2] = 0.0
    y = net(x)
    x2 = x.clone()
    x2[:, 0, 2] = 123.0  # a padded entry of agent 0
    assert torch.equal(net(x2)[:, 0, :1], y[:, 0, :1])
    assert torch.all(y[:, 0, 1] == 0.0)  # agent 0's padded output stays 0


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        maddpg.train(maddpg.Args(env_id="product-game", checkpoint=str(tmp_path / "nope.pt")))
    path = tmp_path / "ippo.pt"
    torch.save({"algo": "ippo", "env_id": "product-game", "args": {}, "model": {}}, path)
    with pytest.raises(ValueError, match="python ippo.py --env-id product-game"):
        maddpg.train(maddpg.Args(env_id="product-game", checkpoint=str(path)))
    torch.save({"algo": "maddpg", "env_id": "ant-2x4", "args": {}, "model": {}}, path)
    with pytest.raises(ValueError, match="pass --env-id ant-2x4"):
        maddpg.train(maddpg.Args(env_id="product-game", checkpoint=str(path)))


def test_capture_video_refused_on_toy_games():
    with pytest.raises(ValueError, match="MA-MuJoCo and MPE only"):
        maddpg.train(maddpg.Args(env_id="matrix-climbing", capture_video=True))


@pytest.mark.slow
def test_learns_product_game(tmp_path, monkeypatch):
    # product-game: r = a1 * a2, a_i in [-2, 2]; optimum 4 at (2, 2) or (-2, -2).
    # Untrained (seed 0): the actor's initial outputs are ~0 (out_std 0.01), greedy eval return -1e-6;
    # uniform random actions also average 0. Trained (seed 0, 3000 steps, ~10 s on one core):
    # greedy eval return 3.99 (mean of the last 20 training episodes, with noise: 3.82).
    monkeypatch.chdir(tmp_path)
    args = maddpg.Args(
        env_id="product-game", seed=0, total_timesteps=3000, num_envs=8, learning_starts=400,
        eval_episodes=8, save_model=False,
    )  # fmt: skip
    result = maddpg.train(args)
    assert result["eval_return"] > 3.5
    assert not math.isnan(result["episodic_return"])


@pytest.mark.slow
def test_learns_matrix_penalty_discrete(tmp_path, monkeypatch):
    # matrix-penalty (k = -100; discrete, Gumbel-softmax ST): optimum 10, safe joint action (1, 1) gives 2.
    # Untrained (seed 0): greedy eval return -100 (both agents' argmax is action 0); uniformly random
    # actions score (2k + 22) / 9 = -19.8. Trained (seed 0, 3000 steps, ~12 s on one core): 2.0, the
    # safe equilibrium (seeds 0, 1, 2 all give 2.0); reaching 10 needs coordinated exploration that
    # MADDPG lacks (the lecture's relative overgeneralisation).
    monkeypatch.chdir(tmp_path)
    args = maddpg.Args(
        env_id="matrix-penalty", seed=0, total_timesteps=3000, num_envs=8, learning_starts=400,
        eval_episodes=8, save_model=False,
    )  # fmt: skip
    result = maddpg.train(args)
    assert result["eval_return"] >= 2.0


@pytest.mark.slow
def test_learns_product_game_with_twin_critics_and_standardised_rewards(tmp_path, monkeypatch):
    # as test_learns_product_game (same seed and budget), with --twin-critics --standardise-rewards:
    # greedy eval return 3.99 (seed 0, ~10 s on one core)
    monkeypatch.chdir(tmp_path)
    args = maddpg.Args(
        env_id="product-game", seed=0, total_timesteps=3000, num_envs=8, learning_starts=400,
        eval_episodes=8, twin_critics=True, standardise_rewards=True,
    )  # fmt: skip
    result = maddpg.train(args)
    assert result["eval_return"] > 3.5
    saved = torch.load(result["model_path"], weights_only=False)["model"]
    assert {"critic2", "target_critic2"} <= set(saved)


@pytest.mark.parametrize("env_id", ["product-game", "mpe-speaker-listener"])
def test_switches_run(tmp_path, monkeypatch, env_id):
    # per-agent actors and critics, the paper's critic input (all observations) and buffer actions
    monkeypatch.chdir(tmp_path)
    args = maddpg.Args(
        env_id=env_id, total_timesteps=64, num_envs=2, learning_starts=32, batch_size=16, eval_episodes=1,
        share_params=False, share_critic=False, critic_input="obs", others_from_buffer=True,
    )  # fmt: skip
    result = maddpg.train(args)
    assert result["global_step"] == 64 and math.isfinite(result["eval_return"])
    reloaded = maddpg.train(maddpg.Args(env_id=env_id, checkpoint=result["model_path"], eval_episodes=1))
    assert reloaded["eval_return"] == result["eval_return"]  # greedy evaluation is deterministic here


def test_critic_learns_the_value_of_a_dead_agent(tmp_path, monkeypatch):
    """The TD target of an agent's last living step bootstraps from its Q after death, so the critic
    must learn that value (the team's return to come) as on-policy critics do (test_on_policy.py).
    Averaged over alive agents only, the critic loss never trained it."""
    from tests.test_on_policy import DyingTeammateEnv

    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    monkeypatch.setattr(
        maddpg.envs, "make", lambda env_id, num_envs=1, seed=None, **kw: DyingTeammateEnv(num_envs=num_envs)
    )
    args = maddpg.Args(  # a valid env id for the argument checks; envs.make returns the game above
        env_id="matrix-climbing", seed=1, num_envs=2, total_timesteps=2000, learning_starts=200,
        eval_episodes=1, save_model=True, share_critic=False,
    )  # fmt: skip
    model_path = maddpg.train(args)["model_path"]
    env = DyingTeammateEnv()
    critic = maddpg.Critic(env, env.state_dim, env.n_actions, args.hidden_dim, args.share_critic)
    critic.load_state_dict(torch.load(model_path, weights_only=False)["model"]["critic"])
    # every joint action (the reward does not depend on them): [4, N, N * 2] one-hot pairs
    joint = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1]], dtype=torch.float32)
    joint = joint[:, None].expand(-1, 2, -1)
    dead_values = []
    for t in range(env.DEATH, 10):
        env.t = t
        x = torch.as_tensor(env._batch()["state"]).expand(4, -1)
        with torch.no_grad():
            dead_values.append(critic(x, joint)[:, 1].mean().item())
    returns_to_come = [sum(0.99**k for k in range(10 - t)) for t in range(env.DEATH, 10)]
    # learned (seed 1): 2.95 against 2.96; with the loss over alive agents only: 6.20
    assert np.mean(dead_values) == pytest.approx(np.mean(returns_to_come), abs=0.5)
