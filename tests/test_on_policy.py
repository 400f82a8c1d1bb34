"""The on-policy actor-critic family (mappo.py, ippo.py, maa2c.py, ia2c.py): GAE, the PPO-clip
and A2C losses, value normalisation, action masking, padded Gaussian dims, and learning.

The four files carry their own copies of the same pieces (one file per algorithm), so every test
here runs on each file that has the piece. Short runs on every env family, saving and reloading
are in tests/test_short_runs.py.
"""

import importlib
import math
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs.core import MultiAgentVecEnv

ALGOS = ["mappo", "ippo", "maa2c", "ia2c"]
PPO = ["mappo", "ippo"]
A2C = ["maa2c", "ia2c"]


def load(name):
    return importlib.import_module(name)


# ---------------------------------------------------------------------------------- GAE
@pytest.mark.parametrize("algo", ALGOS)
def test_gae_with_termination(algo):
    # one env, T = 3, gamma = 0.9, lambda = 0.5; the episode terminates at t = 2
    # r = [1, 2, 3], V = [10, 20, 30], next V = [20, 30, 99] (99: after a termination, ignored)
    # t=2: delta = 3 + 0 - 30 = -27                    A = -27
    # t=1: delta = 2 + 0.9 * 30 - 20 = 9               A = 9 + 0.45 * -27 = -3.15
    # t=0: delta = 1 + 0.9 * 20 - 10 = 9               A = 9 + 0.45 * -3.15 = 7.5825
    f = lambda *xs: [torch.tensor(x, dtype=torch.float32).unsqueeze(-1) for x in xs]
    r, v, nv, term, done = f([1, 2, 3], [10, 20, 30], [20, 30, 99], [0, 0, 1], [0, 0, 1])
    adv, ret = load(algo).compute_gae(r, v, nv, term, done, gamma=0.9, gae_lambda=0.5)
    torch.testing.assert_close(adv.squeeze(-1), torch.tensor([7.5825, -3.15, -27.0]))
    torch.testing.assert_close(ret.squeeze(-1), torch.tensor([17.5825, 16.85, 3.0]))


@pytest.mark.parametrize("algo", ALGOS)
def test_gae_with_truncation_bootstraps_from_the_final_value(algo):
    # one env, T = 3, gamma = 0.9, lambda = 0.5; the episode is truncated at t = 1 with
    # V(final state) = 50; a new episode starts at t = 2 and the rollout ends with V(s_3) = 40
    # t=2: delta = 3 + 0.9 * 40 - 30 = 9              A = 9
    # t=1: delta = 2 + 0.9 * 50 - 20 = 27             A = 27 (the episode ended: no A_2)
    # t=0: delta = 1 + 0.9 * 20 - 10 = 9              A = 9 + 0.45 * 27 = 21.15
    f = lambda *xs: [torch.tensor(x, dtype=torch.float32).unsqueeze(-1) for x in xs]
    r, v, nv, term, done = f([1, 2, 3], [10, 20, 30], [20, 50, 40], [0, 0, 0], [0, 1, 0])
    adv, ret = load(algo).compute_gae(r, v, nv, term, done, gamma=0.9, gae_lambda=0.5)
    torch.testing.assert_close(adv.squeeze(-1), torch.tensor([21.15, 27.0, 9.0]))
    torch.testing.assert_close(ret.squeeze(-1), torch.tensor([31.15, 47.0, 39.0]))


# ------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("algo", PPO)
def test_ppo_clip_loss(algo):
    # eps = 0.2; (ratio, A): (1.5, 2)  -> min(3, 1.2 * 2 = 2.4)     = 2.4
    #                        (0.5, 2)  -> min(1, 0.8 * 2 = 1.6)     = 1.0
    #                        (1.0, -1) -> min(-1, -1)               = -1.0
    #                        (0.5, -1) -> min(-0.5, 0.8 * -1)       = -0.8
    ratio = torch.tensor([1.5, 0.5, 1.0, 0.5])
    old = torch.tensor([0.3, -1.0, -2.0, 0.7])
    new = old + ratio.log()
    adv = torch.tensor([2.0, 2.0, -1.0, -1.0])
    loss = load(algo).ppo_clip_loss(new, old, adv, 0.2, torch.ones(4))
    assert loss.item() == pytest.approx(-(2.4 + 1.0 - 1.0 - 0.8) / 4)
    # the third sample is a dead agent's: left out of the mean
    loss = load(algo).ppo_clip_loss(new, old, adv, 0.2, torch.tensor([1.0, 1.0, 0.0, 1.0]))
    assert loss.item() == pytest.approx(-(2.4 + 1.0 - 0.8) / 3)


@pytest.mark.parametrize("algo", A2C)
def test_a2c_loss(algo):
    # -mean(log pi * A): log pi = [-1, -2, -0.5], A = [3, -1, 4]
    # all alive: -((-3) + 2 + (-2)) / 3 = 1; third agent dead: -((-3) + 2) / 2 = 0.5
    logp, adv = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([3.0, -1.0, 4.0])
    assert load(algo).a2c_loss(logp, adv, torch.ones(3)).item() == pytest.approx(1.0)
    assert load(algo).a2c_loss(logp, adv, torch.tensor([1.0, 1.0, 0.0])).item() == pytest.approx(0.5)


@pytest.mark.parametrize("algo", PPO)
def test_clipped_huber_value_loss(algo):
    # normalised V_old = 0, V = 1, target R = 3, eps = 0.2, Huber delta = 1
    # unclipped: e = 1 - 3 = -2 -> 1 * (2 - 0.5) = 1.5; clipped V = 0.2: e = -2.8 -> 2.3; max = 2.3
    v, v_old, target, mask = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.ones(1)
    m = load(algo)
    assert m.value_loss(v, v_old, target, mask, 0.2, True, 1.0).item() == pytest.approx(2.3)
    # squared error, no clipping: 0.5 * 2^2 = 2
    assert m.value_loss(v, v_old, target, mask, 0.2, False, None).item() == pytest.approx(2.0)


# ------------------------------------------------------------------- value normalisation
@pytest.mark.parametrize("algo", ALGOS)
def test_value_norm_running_statistics(algo):
    norm = load(algo).ValueNorm(beta=0.5)
    # update [1, 2, 3]: mean EMA 0.5 * 2 = 1, mean-square EMA 0.5 * 14/3 = 7/3, debias 0.5
    # -> mean 2, mean square 14/3, var 14/3 - 4 = 2/3
    norm.update(torch.tensor([1.0, 2.0, 3.0]))
    mean, var = norm.mean_var()
    assert mean.item() == pytest.approx(2.0) and var.item() == pytest.approx(2 / 3)
    assert norm.normalize(torch.tensor([3.0])).item() == pytest.approx(1 / math.sqrt(2 / 3), rel=1e-5)
    # update [5]: mean EMA 0.5 * 1 + 0.5 * 5 = 3, mean-square EMA 0.5 * 7/3 + 0.5 * 25 = 41/3,
    # debias 0.75 -> mean 4, mean square 164/9, var 164/9 - 16 = 20/9
    norm.update(torch.tensor([5.0]))
    mean, var = norm.mean_var()
    assert mean.item() == pytest.approx(4.0) and var.item() == pytest.approx(20 / 9)
    x = torch.tensor([-7.0, 0.0, 4.0, 12.5])
    torch.testing.assert_close(norm.denormalize(norm.normalize(x)), x)
    torch.testing.assert_close(norm.normalize(torch.tensor([4.0 + math.sqrt(20 / 9)])), torch.tensor([1.0]))


@pytest.mark.parametrize("algo", ALGOS)
def test_value_norm_variance_is_floored(algo):
    # constant targets: variance 0, floored at 1e-2 (std 0.1), so normalise(6) = (6 - 5) / 0.1 = 10
    norm = load(algo).ValueNorm(beta=0.5)
    norm.update(torch.tensor([5.0, 5.0]))
    assert norm.normalize(torch.tensor([6.0])).item() == pytest.approx(10.0, rel=1e-5)


# ------------------------------------------------------------------------ action spaces
def fake_env(discrete: bool):
    """Two heterogeneous agents: obs sizes 3 and 2; 3 and 2 actions, or 2 and 1 action dims."""
    return SimpleNamespace(
        n_agents=2, discrete=discrete, obs_dims=[3, 2], obs_dim=3, state_dim=4,
        act_dims=[3, 2] if discrete else [2, 1], n_actions=3 if discrete else 0, act_dim=0 if discrete else 2,
    )  # fmt: skip


@pytest.mark.parametrize("algo", ALGOS)
def test_masked_action_is_never_sampled_and_gets_no_probability(algo):
    m = load(algo)
    # logits 0: two available actions of three -> each has probability 1/2
    dist = m.masked_categorical(torch.zeros(1, 3), torch.tensor([[True, False, True]]))
    assert not (dist.sample((2000,)) == 1).any()
    assert dist.log_prob(torch.tensor([0])).item() == pytest.approx(math.log(0.5))
    assert dist.entropy().item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("share", [True, False])
def test_agent_samples_only_available_actions(algo, share):
    m = load(algo)
    torch.manual_seed(0)
    agent = m.Agent(fake_env(True), m.Args(share_params=share))
    # agent 0 may take only action 2; agent 1 has actions 0 and 1 (its padded action 2 is never available)
    avail = torch.tensor([[False, False, True], [True, True, False]]).expand(500, 2, 3)
    action, logprob = agent.act(torch.randn(500, 2, 3), avail)
    assert (action[:, 0] == 2).all() and (action[:, 1] < 2).all()
    # the only available action has probability 1: log-prob 0, the masked ones carry no mass
    torch.testing.assert_close(logprob[:, 0], torch.zeros(500), atol=1e-5, rtol=0)
    greedy, _ = agent.act(torch.randn(500, 2, 3), avail, greedy=True)
    assert (greedy[:, 0] == 2).all() and (greedy[:, 1] < 2).all()


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("share", [True, False])
def test_padded_gaussian_dims_are_left_out(algo, share):
    m = load(algo)
    torch.manual_seed(0)
    agent = m.Agent(fake_env(False), m.Args(share_params=share))
    obs = torch.randn(4, 2, 3)
    action, logprob = agent.act(obs, None)
    assert action.shape == (4, 2, 2)
    dist = agent.dist(obs, None)
    changed = action.clone()
    changed[:, 1, 1] += 5.0  # agent 1's padded action dim
    torch.testing.assert_close(agent.log_prob(dist, changed), logprob)
    # log-std 0: entropy 0.5 * log(2 pi e) = 1.4189 per true dim -> agent 0 two dims, agent 1 one
    h = 0.5 * math.log(2 * math.pi * math.e)
    torch.testing.assert_close(agent.entropy(dist), torch.tensor([[2 * h, h]]).expand(4, 2))


# ------------------------------------------------------------------------------ learning
# product-game: r = a1 * a2 with a_i in [-2, 2]; optimum 4 at (2, 2) or (-2, -2); the untrained
# policy (zero-mean Gaussians) scores 0 on average, its greedy actions ~0 score ~0.
LEARNING = {
    "mappo": dict(num_envs=64, num_steps=1, total_timesteps=3200),
    "ippo": dict(num_envs=64, num_steps=1, total_timesteps=3200),
    "maa2c": dict(num_envs=32, num_steps=1, total_timesteps=6400),
    "ia2c": dict(num_envs=32, num_steps=1, total_timesteps=6400),
}


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
def test_learns_the_product_game(algo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    m = load(algo)
    args = m.Args(env_id="product-game", seed=1, eval_interval=0, eval_episodes=8, save_model=False, **LEARNING[algo])
    result = m.train(args)
    # untrained: 0; reached (seed 1): 4.0 (the optimum) greedy and ~4 in training
    assert result["eval_return"] > 3.5
    assert result["episodic_return"] > 3.0


# ------------------------------------------------------------------------ dead agents' values
class DyingTeammateEnv(MultiAgentVecEnv):
    """Two agents, 10 steps, team reward 1 per step; agent 1 dies after step 4.

    obs: the one-hot time step (all zeros for the dead agent, as in SMAX); state: the same
    one-hot. With gamma 0.99 the return to come at step t is sum_{k < 10 - t} 0.99^k, and the
    dead agent's steps 5..9 have returns 4.90, 3.94, 2.97, 1.99, 1.00 (mean 2.96).
    """

    episode_limit = 10
    DEATH = 5

    def __init__(self, env_id: str = "dying-teammate", num_envs: int = 1, seed: int | None = None):
        self.env_id, self.num_envs, self.n_agents = env_id, num_envs, 2
        self.observation_spaces = [gym.spaces.Box(0.0, 1.0, (10,), np.float32)] * 2
        self.action_spaces = [gym.spaces.Discrete(2)] * 2
        self.state_dim = 10
        self._init_sizes()
        self.t = 0

    def _batch(self) -> dict:
        E, t = self.num_envs, self.t
        onehot = np.eye(11, 10, dtype=np.float32)[t]  # all zeros at t = 10, the final obs
        alive = np.array([True, t < self.DEATH])
        return {
            "obs": np.tile(onehot * alive[:, None], (E, 1, 1)),
            "state": np.tile(onehot, (E, 1)),
            "alive": np.tile(alive, (E, 1)),
            "avail": np.ones((E, 2, 2), bool),
        }

    def reset(self, seed: int | None = None) -> dict:
        self.t = 0
        return self._batch()

    def step(self, actions):
        E = self.num_envs
        self.t += 1
        done = self.t == self.episode_limit
        final = self._batch()  # the step's own arrays (the episode's last ones when done)
        info = {"agent_rewards": np.ones((E, 2), np.float32), **{f"final_{k}": v for k, v in final.items()}}
        if done:
            info["episode"] = {"return": np.full(E, 10.0), "length": np.full(E, 10.0)}
            self.t = 0
        return self._batch(), np.ones(E, np.float32), np.full(E, done), np.zeros(E, bool), info


@pytest.mark.parametrize("algo", ALGOS)
def test_critic_learns_the_value_of_a_dead_agent(algo, tmp_path, monkeypatch):
    """GAE bootstraps an agent's last living step from its value after death, so the critic must
    learn that value (the team's return to come). Left out of the value loss, it stayed whatever
    the network extrapolated, and on smax-2s3z it fed back through ValueNorm until IPPO's run
    diverged (docs/ippo.md)."""
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    m = load(algo)
    monkeypatch.setattr(m.envs, "make", lambda env_id, num_envs=1, seed=None, **kw: DyingTeammateEnv(num_envs=num_envs))
    args = m.Args(  # a valid env id for the argument checks; envs.make returns the game above
        env_id="matrix-climbing", seed=1, num_envs=2, num_steps=10, total_timesteps=6000,
        eval_interval=0, eval_episodes=1, save_model=True,
    )  # fmt: skip
    model_path = m.train(args)["model_path"]
    agent = m.Agent(DyingTeammateEnv(), args)
    agent.load_state_dict(torch.load(model_path, weights_only=False)["model"])
    env = DyingTeammateEnv(num_envs=1)
    dead_values = []
    for t in range(env.DEATH, 10):
        env.t = t
        batch = env._batch()
        critic_in = batch["obs"] if algo in ("ippo", "ia2c") else batch["state"]
        with torch.no_grad():
            value = agent.value_norm.denormalize(agent.get_value(torch.as_tensor(critic_in)))
        dead_values.append(value[0, 1].item())
    returns_to_come = [sum(0.99**k for k in range(10 - t)) for t in range(env.DEATH, 10)]
    # learned (seed 1): 2.96 (mappo, maa2c: each step's return), 3.06 (ippo, ia2c: one value for the
    # all-zero observation); with the dead agents left out of the value loss: 4.96 to 7.68
    assert np.mean(dead_values) == pytest.approx(np.mean(returns_to_come), abs=0.5)
