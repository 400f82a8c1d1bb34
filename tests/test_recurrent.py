"""The recurrent variants mappo_rnn.py, ippo_rnn.py, happo_rnn.py, hatrpo_rnn.py, ia2c_rnn.py and
maa2c_rnn.py (issue 48): the chunking of a rollout, the masked GRU step, the replay of stored hidden
states in training, and learning the memory-cue task that no feed-forward policy can beat chance on.
The A2C files take one gradient step per rollout and train on the whole rollout as one sequence per
env (no chunks), so the chunking tests are not theirs. Short runs on every env family,
saving and reloading are in tests/test_short_runs.py.

The heterogeneous-agent files (HAAgents: one actor per agent, `dist(i, ...)`, and one critic whose
`value(state, obs, ...)` has a hidden state [B, H], or [B, N, H] per agent with FP) are read through
the adapters below, so that every test runs unchanged on both kinds of file."""

import dataclasses
import importlib
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import envs

RNN = ["mappo_rnn", "ippo_rnn", "happo_rnn", "hatrpo_rnn"]  # train on chunks of --chunk-length steps
A2C_RNN = ["ia2c_rnn", "maa2c_rnn"]  # one gradient step per rollout: the rollout is one sequence per env
OBS_CRITIC = {"ippo_rnn", "ia2c_rnn"}  # critics on the agent's observations, not the state


def load(name):
    return importlib.import_module(name)


def make_args(m, **values):
    """m.Args from the values it has fields for (hatrpo_rnn: critic_epochs, no update_epochs)."""
    fields = {f.name for f in dataclasses.fields(m.Args)}
    return m.Args(**{k: v for k, v in values.items() if k in fields})


def agent_class(m):
    """The class holding the networks: Agent (mappo_rnn, ippo_rnn) or HAAgents (happo_rnn, hatrpo_rnn)."""
    return m.HAAgents if hasattr(m, "HAAgents") else m.Agent


def zero_hidden(agent, B: int):
    """The actors' and the critic's hidden states of B envs at the start of episodes."""
    H = agent.rnn_hidden_dim
    critic_h = agent.critic_hidden(B, "cpu") if hasattr(agent, "critic_hidden") else torch.zeros(B, agent.n_agents, H)
    return torch.zeros(B, agent.n_agents, H), critic_h


def policy_and_values(agent, obs, avail, state, actor_h, critic_h, starts):
    """On sequences [L, B, ...] from the hidden states carried in: the logits [L, B, N, n_actions] (padded
    with 0), the values [L, B, ...], and the actors' and the critic's hidden states after the last step."""
    if not hasattr(agent, "critic_hidden"):  # Agent: a joint policy; the critic on the state (MAPPO) or obs (IPPO)
        dist, actor_h = agent.dist(obs, avail, actor_h, starts)
        values, critic_h = agent.get_value(state if state is not None else obs, critic_h, starts)
        return dist.logits, values, actor_h, critic_h
    logits, hs = [], []
    for i in range(agent.n_agents):
        dist, h = agent.dist(i, obs[:, :, i], avail[:, :, i], actor_h[:, i], starts)
        logits.append(F.pad(dist.logits, (0, avail.shape[-1] - dist.logits.shape[-1])))
        hs.append(h)
    values, critic_h = agent.value(state, obs, critic_h, starts)
    return torch.stack(logits, 2), values, torch.stack(hs, 1), critic_h


# ---------------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("algo", RNN)
def test_to_chunks_cuts_each_envs_rollout_into_consecutive_steps(algo):
    # x[t, e] = 10 t + e: T = 4 steps of E = 2 envs, chunks of L = 2 steps
    x = torch.tensor([[10.0 * t + e for e in range(2)] for t in range(4)])
    chunks = load(algo).to_chunks(x, 2)
    # chunk k * E + e holds steps 2k, 2k + 1 of env e
    assert chunks.tolist() == [[0.0, 1.0, 20.0, 21.0], [10.0, 11.0, 30.0, 31.0]]


@pytest.mark.parametrize("algo", RNN)
def test_a_chunks_initial_hidden_state_is_the_one_stored_at_its_first_step(algo):
    T, E, N, H = 6, 2, 3, 4
    stored = torch.arange(T * E * N * H, dtype=torch.float32).view(T, E, N, H)  # [T, E, N, H]
    h0 = load(algo).to_chunks(stored, 3)[0]  # chunks of 3 steps start at steps 0 and 3
    assert h0.shape == (4, N, H)
    for c, (t, e) in enumerate([(0, 0), (0, 1), (3, 0), (3, 1)]):
        assert torch.equal(h0[c], stored[t, e])


def decaying_gru() -> nn.GRUCell:
    """A 1-unit GRU with every weight and bias 0 except W_in = 1: r = z = 1/2, n = tanh(x),
    so h_t = tanh(x_t) / 2 + h_{t-1} / 2."""
    gru = nn.GRUCell(1, 1)
    with torch.no_grad():
        for p in gru.parameters():
            p.zero_()
        gru.weight_ih[2] = 1.0  # the rows are (reset, update, new)
    return gru


@pytest.mark.parametrize("algo", RNN + A2C_RNN)
def test_masked_gru_resets_the_hidden_state_exactly_at_episode_starts(algo):
    x = torch.tensor([[0.0, 0.0], [2.0, 2.0], [0.0, 0.0]]).unsqueeze(-1)  # [L = 3, B = 2, 1]
    h = torch.tensor([[4.0], [4.0]])  # carried into step 0
    starts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # row 0: an episode starts at step 1
    with torch.no_grad():
        hs = load(algo).gru_sequence(decaying_gru(), x, h, starts)[..., 0]
    t2 = math.tanh(2.0) / 2  # 0.482
    # row 0: 4 -> 2, reset to 0 -> tanh(2)/2, then halved; row 1 (no start): 4 -> 2 -> 1 + tanh(2)/2 -> halved
    expected = [[2.0, 2.0], [t2, 1.0 + t2], [t2 / 2, (1.0 + t2) / 2]]
    assert torch.allclose(hs, torch.tensor(expected))


def tiny_env(n_actions: int = 3, obs_dim: int = 5, state_dim: int = 4):
    return SimpleNamespace(
        n_agents=2, discrete=True, obs_dims=[obs_dim, obs_dim - 1], act_dims=[n_actions, n_actions - 1],
        n_actions=n_actions, obs_dim=obs_dim, state_dim=state_dim,
    )  # fmt: skip


@pytest.mark.parametrize("algo", RNN + A2C_RNN)
@pytest.mark.parametrize("share", [True, False])
def test_training_on_chunks_replays_the_rollouts_outputs(algo, share):
    """Stepping through a rollout with the carried hidden state (reset at episode starts), storing
    the state carried into each step, gives the same policy and values as the chunks that start
    from the stored states: the ratio pi/pi_old is 1 before the first update. The A2C files'
    sequence is the whole rollout of each env, from the state carried into its first step."""
    m = load(algo)
    torch.manual_seed(0)
    env = tiny_env()
    agent = agent_class(m)(env, m.Args(share_params=share))
    T, E, N = 8, 3, 2
    # the training sequences [L, C, ...]: chunks of L = 4 steps (C = 2 E), or the whole rollout (C = E)
    L, cut = (4, lambda x: m.to_chunks(x, 4)) if hasattr(m, "to_chunks") else (T, lambda x: x)
    obs, state = torch.randn(T, E, N, env.obs_dim), torch.randn(T, E, env.state_dim)
    avail = torch.ones(T, E, N, env.n_actions, dtype=torch.bool)
    starts = torch.zeros(T, E)
    starts[0, 2] = 1.0  # envs 0 and 1 go on with episodes begun in an earlier rollout
    starts[2, 0] = starts[5, 1] = starts[4, 2] = 1.0  # episode starts inside chunks and at a chunk's start
    if algo in OBS_CRITIC:
        state = None  # IPPO's and IA2C's critics read the observations
    actor_h, critic_h = [torch.randn_like(h) for h in zero_hidden(agent, E)]  # carried in from the last rollout
    actor_h_buf, critic_h_buf, logits, values = [], [], [], []
    with torch.no_grad():
        for t in range(T):
            actor_h_buf.append(actor_h)
            critic_h_buf.append(critic_h)
            step_logits, value, actor_h, critic_h = policy_and_values(
                agent, obs[t][None], avail[t][None], None if state is None else state[t][None], actor_h, critic_h,
                starts[t][None],
            )  # fmt: skip
            logits.append(step_logits[0])
            values.append(value[0])
        c_logits, c_values, _, _ = policy_and_values(
            agent, cut(obs), cut(avail), None if state is None else cut(state),
            cut(torch.stack(actor_h_buf))[0], cut(torch.stack(critic_h_buf))[0], cut(starts),
        )  # fmt: skip
        # the memory matters: from zeros instead of the stored states, a sequence differs up to its first
        # episode start (reset) and is the same from there on
        C = cut(starts).shape[1]
        z_logits, _, _, _ = policy_and_values(
            agent, cut(obs), cut(avail), None if state is None else cut(state), *zero_hidden(agent, C), cut(starts),
        )  # fmt: skip
    assert torch.allclose(c_logits, cut(torch.stack(logits)), atol=1e-5)
    assert torch.allclose(c_values, cut(torch.stack(values)), atol=1e-5)
    first_starts = [int(s.nonzero()[0]) if s.any() else L for s in cut(starts).T]  # per sequence
    # chunks of 4: env 0's first chunk resets at its step 2, env 2's chunks at their step 0, env 1's second
    # at its step 1; the whole rollouts: env 0 at step 2, env 1 at step 5, env 2 at step 0
    assert first_starts == ([2, 4, 0, 4, 1, 0] if L == 4 else [2, 5, 0])
    for c, first in enumerate(first_starts):
        assert torch.allclose(z_logits[first:, c], c_logits[first:, c], atol=1e-5)
        if first > 0:
            assert not torch.allclose(z_logits[0, c], c_logits[0, c], atol=1e-3)


class TruncatedMemoryCue:
    """memory-cue whose episode ends are time-limit truncations (every env ends at the same step)."""

    def __init__(self, env):
        self.env = env

    def __getattr__(self, name):
        return getattr(self.env, name)

    def step(self, actions):
        batch, reward, terminated, truncated, info = self.env.step(actions)
        return batch, reward, truncated, terminated, info


@pytest.mark.parametrize("algo", RNN + A2C_RNN)
def test_truncated_episode_bootstraps_from_the_critics_hidden_state_after_its_last_step(algo, tmp_path, monkeypatch):
    """V(final state) of a truncated episode continues the episode: the critic runs on it from the
    hidden state its last step produced (not reset, not the one before that step); the next episode's
    first step then resets it."""
    monkeypatch.chdir(tmp_path)
    m = load(algo)
    calls = []  # (h carried in, starts, h after) of every one-step critic call in the rollout

    def record(value, h, starts, h_after, steps):
        if steps == 1:
            calls.append((h.clone(), starts.clone(), h_after.clone()))
        return value, h_after

    if hasattr(m, "HAAgents"):

        class RecordingHAAgents(m.HAAgents):
            def value(self, state, obs, h, starts):
                value, h_after = super().value(state, obs, h, starts)
                return record(value, h, starts, h_after, state.shape[0])

        monkeypatch.setattr(m, "HAAgents", RecordingHAAgents)
    else:

        class RecordingAgent(m.Agent):
            def get_value(self, x, h, starts):
                value, h_after = super().get_value(x, h, starts)
                return record(value, h, starts, h_after, x.shape[0])

        monkeypatch.setattr(m, "Agent", RecordingAgent)
    make = envs.make
    monkeypatch.setattr(envs, "make", lambda env_id, **kwargs: TruncatedMemoryCue(make(env_id, **kwargs)))
    args = make_args(
        m, env_id="memory-cue", num_envs=2, num_steps=10, chunk_length=5, total_timesteps=20, update_epochs=1,
        critic_epochs=1, eval_interval=0, eval_episodes=1, save_model=False,
    )  # fmt: skip
    m.train(args)
    # one rollout of 10 steps, episodes of 4: the calls of steps 0-3, V(final state), steps 4-7,
    # V(final state), steps 8-9, then V of the state after the rollout
    assert len(calls) == 13
    for i in (4, 9):
        h_in, starts, _ = calls[i]
        assert torch.equal(starts, torch.zeros_like(starts))  # the episode goes on: no reset
        assert torch.equal(h_in, calls[i - 1][2])  # from the hidden state after the last step
        assert h_in.abs().sum() > 0
        next_h_in, next_starts, _ = calls[i + 1]
        assert torch.equal(next_starts, torch.ones_like(next_starts))  # the next episode's first step resets
        assert torch.equal(next_h_in, calls[i - 1][2])  # (the carried state, multiplied by 0 inside the step)


@pytest.mark.parametrize("algo", RNN)
def test_rollout_not_a_multiple_of_the_chunk_length_is_refused(algo):
    m = load(algo)
    with pytest.raises(ValueError, match="--num-steps 25 must be a multiple of --chunk-length 10"):
        m.train(m.Args(env_id="memory-cue", num_steps=25, chunk_length=10))
    flag = "num_minibatches" if hasattr(m.Args, "num_minibatches") else "critic_num_minibatches"  # hatrpo_rnn
    message = f"--{flag.replace('_', '-')} 5 (exceeds|must be between 1 and) the number of chunks per rollout"
    with pytest.raises(ValueError, match=message):
        m.train(m.Args(env_id="memory-cue", num_envs=2, num_steps=20, chunk_length=10, **{flag: 5}))


@pytest.mark.parametrize("algo", A2C_RNN)
def test_a2c_trains_each_rollout_as_one_sequence_from_the_hidden_states_carried_into_it(algo, tmp_path, monkeypatch):
    """Two rollouts of 6 steps on memory-cue (episodes of 4): the second rollout begins inside an
    episode, so its training sequence must start from the hidden states the first rollout's last
    step produced (not zeros), with starts 0, 0, 1, 0, 0, 0 (the next episode begins at step 8)."""
    monkeypatch.chdir(tmp_path)
    m = load(algo)
    calls = {"actor": [], "critic": []}  # (steps, h carried in, starts, h after) of every call

    class RecordingAgent(m.Agent):
        def dist(self, obs, avail, h, starts):
            dist, h_after = super().dist(obs, avail, h, starts)
            calls["actor"].append((obs.shape[0], h.clone(), starts.clone(), h_after.clone()))
            return dist, h_after

        def get_value(self, x, h, starts):
            value, h_after = super().get_value(x, h, starts)
            calls["critic"].append((x.shape[0], h.clone(), starts.clone(), h_after.clone()))
            return value, h_after

    monkeypatch.setattr(m, "Agent", RecordingAgent)
    m.train(m.Args(env_id="memory-cue", num_envs=2, num_steps=6, total_timesteps=24, eval_interval=0,
                   eval_episodes=1, save_model=False))  # fmt: skip
    for net in ("actor", "critic"):
        rollout_steps = [c for c in calls[net] if c[0] == 1]
        sequences = [c for c in calls[net] if c[0] == 6]  # the training calls, one per rollout
        assert len(sequences) == 2
        steps, h_in, starts, _ = sequences[0]
        assert torch.equal(starts[:, 0], torch.tensor([1.0, 0, 0, 0, 1, 0]))  # env 0: episodes start at 0 and 4
        assert torch.equal(h_in, torch.zeros_like(h_in))
        steps, h_in, starts, _ = sequences[1]
        assert torch.equal(starts[:, 0], torch.tensor([0.0, 0, 1, 0, 0, 0]))
        # the hidden state after the first rollout's last (6th) step; the critic's V(next obs) call that
        # follows it in GAE does not move the carried state
        assert h_in.abs().sum() > 0
        assert torch.equal(h_in, rollout_steps[5][3])


@pytest.mark.parametrize("algo", A2C_RNN)
def test_a2c_checkpoint_keeps_its_network_sizes(algo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = load(algo)
    small = dict(env_id="memory-cue", num_envs=2, num_steps=4, eval_interval=0, eval_episodes=2)
    trained = m.train(m.Args(**small, total_timesteps=8, rnn_hidden_dim=8, hidden_dim=16))
    saved = torch.load(trained["model_path"], weights_only=False)
    assert saved["algo"] == algo and saved["args"]["rnn_hidden_dim"] == 8 and saved["args"]["hidden_dim"] == 16
    reloaded = m.train(m.Args(**small, checkpoint=trained["model_path"]))  # default sizes here: the saved ones win
    assert reloaded["eval_return"] == trained["eval_return"]  # the same greedy episodes, same env seed


# ---------------------------------------------------------------------------------- learning
MEMORY_CUE = dict(
    env_id="memory-cue", seed=1, num_envs=16, num_steps=10, total_timesteps=3000, eval_interval=0, eval_episodes=100
)


@pytest.mark.slow
@pytest.mark.parametrize("algo", RNN + A2C_RNN)
def test_recurrent_file_remembers_the_cue_and_its_feed_forward_file_cannot(algo, tmp_path, monkeypatch):
    """memory-cue: a cue at the first of 4 steps, acted on at the last. Optimum 1.0; a memoryless
    policy scores 0.5 in expectation. Chunks (A2C: rollouts) of 10 steps span episode starts, so
    the resets inside them are exercised."""
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    m = load(algo)
    # A2C takes one gradient step per rollout (PPO: 10 epochs): 75 rollouts instead of 19
    settings = dict(MEMORY_CUE, total_timesteps=12_000) if algo in A2C_RNN else MEMORY_CUE
    result = m.train(m.Args(**settings))
    # reached (seed 1): 1.00 greedy over 100 episodes, by 2,000 env steps (A2C: by 9,600)
    assert result["eval_return"] >= 0.95
    # the saved model acts again with its memory: evaluation carries the hidden state across steps
    reloaded = m.train(m.Args(**settings, checkpoint=result["model_path"]))
    assert reloaded["eval_return"] >= 0.95
    ff = load(algo.removesuffix("_rnn"))
    ff_result = ff.train(ff.Args(**settings, save_model=False))
    # feed-forward (seed 1): 0.42 greedy, chance
    assert ff_result["eval_return"] <= 0.65
