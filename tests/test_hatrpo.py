"""HATRPO (hatrpo.py): conjugate gradient, the Fisher-vector product and the line search; the
value clip of hatrpo.py and hatrpo_rnn.py.

(The M factor chain and the product-game learning test, shared with HAPPO, are in test_happo.py.)
"""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch.func import functional_call

import hatrpo
import hatrpo_rnn


def test_conjugate_gradient_solves_a_small_spd_system():
    # A = [[4, 1], [1, 3]], b = [1, 2]: A^-1 = 1/11 [[3, -1], [-1, 4]], so x = 1/11 [3 - 2, -1 + 8] = [1/11, 7/11]
    A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    b = torch.tensor([1.0, 2.0])
    x = hatrpo.conjugate_gradient(lambda v: A @ v, b, iters=10)
    torch.testing.assert_close(x, torch.tensor([1 / 11, 7 / 11]))
    # b = 0 -> x = 0 (no division by zero)
    torch.testing.assert_close(hatrpo.conjugate_gradient(lambda v: A @ v, torch.zeros(2), iters=10), torch.zeros(2))


@pytest.mark.parametrize("discrete", [False, True], ids=["gaussian", "categorical"])
def test_fisher_vector_product_matches_the_explicit_hessian_of_the_mean_kl(discrete):
    torch.manual_seed(0)
    actor = hatrpo.Actor(obs_dim=2, n_out=3, discrete=discrete, hidden=4, feature_norm=False, log_std_init=-0.5)
    with torch.no_grad():  # bigger output weights than the 0.01 init, so that every block of H is non-trivial
        actor.head.weight.normal_()
    obs = torch.randn(5, 2)
    avail = torch.tensor([[True, True, False]] * 5)  # a masked action must not break anything
    names = [n for n, _ in actor.named_parameters()]
    shapes = [p.shape for _, p in actor.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in actor.parameters()])
    with torch.no_grad():
        old = actor(obs, 3, avail)

    def mean_kl_of(flat):
        params, offset = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[offset : offset + s.numel()].view(s)
            offset += s.numel()
        return hatrpo.kl_divergence(old, functional_call(actor, params, (obs, 3, avail))).mean()

    H = torch.autograd.functional.hessian(mean_kl_of, theta)  # the explicit Hessian at theta_old
    v = torch.randn(theta.numel())
    mean_kl = hatrpo.kl_divergence(old, actor(obs, 3, avail)).mean()  # as a graph of the module's parameters
    fvp = hatrpo.fisher_vector_product(mean_kl, list(actor.parameters()), damping=0.1)
    torch.testing.assert_close(fvp(v), H @ v + 0.1 * v, atol=1e-5, rtol=1e-4)
    assert H.abs().sum() > 0


def test_accept_step_rule():
    # kappa = 0.5, delta = 0.01, expected improvement 1.0
    assert hatrpo.accept_step(0.6, 1.0, kl=0.005, kl_threshold=0.01, accept_ratio=0.5)  # 0.6 >= 0.5, KL ok
    assert hatrpo.accept_step(0.5, 1.0, kl=0.01, kl_threshold=0.01, accept_ratio=0.5)  # on both bounds
    assert not hatrpo.accept_step(0.4, 1.0, kl=0.005, kl_threshold=0.01, accept_ratio=0.5)  # too little improvement
    assert not hatrpo.accept_step(0.9, 1.0, kl=0.02, kl_threshold=0.01, accept_ratio=0.5)  # KL too large
    assert not hatrpo.accept_step(0.0, 0.0, kl=0.0, kl_threshold=0.01, accept_ratio=0.5)  # no improvement


def test_line_search_takes_the_first_acceptable_step_or_keeps_the_old_parameters():
    args = hatrpo.Args(ls_step=4, backtrack_coeff=0.5, accept_ratio=0.5, kl_threshold=0.01)
    params, full_step = torch.tensor([1.0, 1.0]), torch.tensor([2.0, -4.0])
    # expected improvement of the full step: 1.0, so 0.5^j at try j; tries by step fraction:
    #   j = 0 (1.0):  improvement 0.8 >= 0.5 * 1.0   but KL 0.02 > 0.01  -> reject
    #   j = 1 (0.5):  improvement 0.2 <  0.5 * 0.5 = 0.25                -> reject
    #   j = 2 (0.25): improvement 0.2 >= 0.5 * 0.25 = 0.125, KL 0.005   -> accept
    outcomes = {1.0: (0.8, 0.02), 0.5: (0.2, 0.004), 0.25: (0.2, 0.005), 0.125: (0.1, 0.001)}
    tried = []

    def evaluate(new_params):
        fraction = float((new_params - params)[0] / full_step[0])
        tried.append(fraction)
        return outcomes[fraction]

    new, accepted, j, improvement, kl = hatrpo.line_search(evaluate, params, full_step, 1.0, args)
    assert accepted and j == 2 and tried == [1.0, 0.5, 0.25]
    torch.testing.assert_close(new, torch.tensor([1.5, 0.0]))  # params + 0.25 * full_step
    # nothing acceptable (the surrogate never improves): the old parameters stay after ls_step tries
    tried.clear()
    never = lambda p: (tried.append(0) or (-0.1, 0.0))  # noqa: E731
    new, accepted, j, _, _ = hatrpo.line_search(never, params, full_step, 1.0, args)
    assert not accepted and j == 4 and len(tried) == 4
    torch.testing.assert_close(new, params)


@pytest.mark.parametrize("state_type", ["EP", "FP"])
@pytest.mark.parametrize("module", [hatrpo, hatrpo_rnn], ids=["hatrpo", "hatrpo_rnn"])
def test_value_clip_window_is_centred_on_the_critics_rollout_output(module, state_type, tmp_path, monkeypatch):
    """The clipped value loss clips around the critic's output at rollout time (HARL, on-policy, MAT),
    not around the stored value re-normalised with the statistics updated on this rollout's returns.
    The critic trains after the actors, so at its first minibatch it is still the rollout's critic:
    its output new_v (hatrpo_rnn: replayed over chunks from the stored hidden states) and the clip
    centre old_v must agree. matrix-climbing's returns (up to 11) move the ValueNorm statistics far
    from their initial (0, 1), so the re-normalised values would not."""
    monkeypatch.chdir(tmp_path)
    calls = []

    def recording_value_loss(new_v, old_v, *rest):
        calls.append((new_v.detach().clone(), old_v.clone()))
        return value_loss(new_v, old_v, *rest)

    value_loss = module.value_loss
    monkeypatch.setattr(module, "value_loss", recording_value_loss)
    values = dict(
        env_id="matrix-climbing", num_envs=4, num_steps=8, chunk_length=4, total_timesteps=64, critic_epochs=2,
        eval_interval=0, eval_episodes=1, save_model=False, state_type=state_type,
    )  # fmt: skip
    fields = {f.name for f in dataclasses.fields(module.Args)}
    module.train(module.Args(**{k: v for k, v in values.items() if k in fields}))
    assert len(calls) == 2 * 2  # 2 iterations x 2 epochs x 1 minibatch
    for first in (0, 2):  # the first critic minibatch of each iteration
        new_v, old_v = calls[first]
        torch.testing.assert_close(old_v, new_v, atol=1e-5, rtol=1e-5)
    # the second epoch's critic has moved: the centre stays the rollout's output
    assert not torch.allclose(calls[1][0], calls[1][1], atol=1e-5)


# ------------------------------------------------------------------ hatrpo_rnn: the step over chunks
@pytest.mark.parametrize("discrete", [False, True], ids=["gaussian", "categorical"])
def test_recurrent_fisher_vector_product_matches_the_explicit_hessian_over_chunks(discrete):
    """hatrpo_rnn: H is the Hessian of the mean KL over chunks replayed through the GRU from their
    stored initial hidden states (an episode starts inside one chunk); the double backward of the
    Fisher-vector product goes through the GRU cells."""
    torch.manual_seed(0)
    actor = hatrpo_rnn.Actor(
        obs_dim=2, n_out=3, discrete=discrete, hidden=4, rnn_hidden=3, feature_norm=False, log_std_init=-0.5
    )
    with torch.no_grad():
        actor.head.weight.normal_()
    L, C = 3, 2
    obs, h0 = torch.randn(L, C, 2), torch.randn(C, 3)
    starts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    avail = torch.tensor([True, True, False]).expand(L, C, 3)
    names = [n for n, _ in actor.named_parameters()]
    shapes = [p.shape for _, p in actor.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in actor.parameters()])
    with torch.no_grad():
        old, _ = actor(obs, h0, starts, 3, avail)

    def mean_kl_of(flat):
        params, offset = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[offset : offset + s.numel()].view(s)
            offset += s.numel()
        new, _ = functional_call(actor, params, (obs, h0, starts, 3, avail))
        return hatrpo_rnn.kl_divergence(old, new).mean()

    H = torch.autograd.functional.hessian(mean_kl_of, theta)
    v = torch.randn(theta.numel())
    mean_kl = hatrpo_rnn.kl_divergence(old, actor(obs, h0, starts, 3, avail)[0]).mean()
    fvp = hatrpo_rnn.fisher_vector_product(mean_kl, list(actor.parameters()), damping=0.1)
    torch.testing.assert_close(fvp(v), H @ v + 0.1 * v, atol=1e-5, rtol=1e-4)
    offsets = torch.tensor([0] + [s.numel() for s in shapes]).cumsum(0)
    gru = torch.cat([torch.arange(offsets[k], offsets[k + 1]) for k, n in enumerate(names) if ".gru." in n])
    assert H[gru][:, gru].abs().sum() > 0  # the GRU's weights are part of the curvature


def test_recurrent_trust_region_step_keeps_the_replayed_kl_within_delta_and_ratio_is_replayed():
    """hatrpo_rnn.trpo_update on chunks: recomputed independently by replaying agent 0's chunks
    from the stored hidden states, the accepted step improves the surrogate mean(r M) over alive
    samples and keeps their mean KL <= kl_threshold; agent 1's actor does not move; and the ratio
    that enters M (probability_ratio) is the replayed new/old probability, 1 where agent 0 is dead."""
    torch.manual_seed(0)
    env = SimpleNamespace(
        n_agents=2, discrete=True, obs_dims=[4, 3], act_dims=[3, 2], n_actions=3, obs_dim=4, state_dim=5
    )
    args = hatrpo_rnn.Args(kl_threshold=0.01, hidden_dim=16, rnn_hidden_dim=8)
    agents = hatrpo_rnn.HAAgents(env, args)
    L, C, N = 5, 6, 2
    obs, h0 = torch.randn(L, C, N, 4), torch.randn(C, N, 8)
    avail = torch.ones(L, C, N, 3, dtype=torch.bool)
    avail[..., 1, 2] = False  # agent 1 has two actions
    starts = torch.zeros(L, C)
    starts[2, 0] = starts[0, 3] = 1.0
    alive = torch.ones(L, C, N, dtype=torch.bool)
    alive[3:, 1, 0] = False  # agent 0 dies in chunk 1
    with torch.no_grad():
        old = [agents.dist(i, obs[:, :, i], avail[:, :, i], h0[:, i], starts)[0] for i in range(N)]
        act = torch.stack([d.sample() for d in old], 2)
        logp = torch.stack([d.log_prob(act[:, :, i]) for i, d in enumerate(old)], 2)
    data = {"obs": obs, "avail": avail, "act": act, "logp": logp, "alive": alive, "actor_h0": h0, "starts": starts}
    M = torch.randn(L, C, N)
    actor1 = [p.detach().clone() for p in agents.actor(1).parameters()]
    stats = {"kl": [], "surrogate_improvement": [], "expected_improvement": [], "line_search_accepted": []}
    hatrpo_rnn.trpo_update(agents, [0], data, M, args, stats)
    assert stats["line_search_accepted"] == [1.0]
    with torch.no_grad():
        new, _ = agents.dist(0, obs[:, :, 0], avail[:, :, 0], h0[:, 0], starts)
        ratio = (new.log_prob(act[:, :, 0]) - logp[:, :, 0]).exp()
        mask = alive[:, :, 0].float()
        improvement = ((ratio - 1.0) * M[:, :, 0] * mask).sum() / mask.sum()
        kl = (hatrpo_rnn.kl_divergence(old[0], new) * mask).sum() / mask.sum()
    assert improvement > 0 and 0 < kl <= args.kl_threshold
    assert all(torch.equal(a, b) for a, b in zip(actor1, agents.actor(1).parameters()))
    replayed = hatrpo_rnn.probability_ratio(agents, 0, data)
    torch.testing.assert_close(replayed, torch.where(alive[:, :, 0], ratio, torch.ones_like(ratio)))
    assert not torch.allclose(replayed, torch.ones_like(replayed))
