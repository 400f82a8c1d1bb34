# Multi-Agent Transformer (MAT): Wen et al., "Multi-Agent RL is a Sequence Modeling Problem", NeurIPS 2022
"""Multi-Agent Transformer (MAT) and MAT-Dec (`--dec`).

MAT casts the joint policy as a sequence model over the agents i_1..i_n (the lecture's
multi-agent advantage decomposition: agent i_m acts knowing the actions of i_1..i_{m-1}).

- Encoder (the critic): the observations o^{i_1..i_n} are embedded and mixed by unmasked
  self-attention into representations ô^{i_1..i_n}; a value head gives V(ô^{i_m}) per agent.
  Encoder loss (lecture eq. 4): per-agent value regression to the λ-return (GAE targets, so
  gae_lambda=0 gives exactly the lecture's TD target R + γ V(ô_{t+1}^{i_m})), with value
  normalisation, Huber loss and value clipping as in the paper's code.
- Decoder (the actor): the action sequence shifted right by one (a start token for i_1) is
  embedded, passed through masked (causal) self-attention, then attention between the
  representations ô (queries) and the action stream (keys/values, causal mask), then an
  MLP head: agent i_m's policy π(a^{i_m} | ô^{i_1:n}, a^{i_1:m-1}). At inference, actions are
  generated auto-regressively, agent by agent (Algorithm 1, lines 9-11); at training, all
  policies come from one parallel pass on the stored actions (line 20).
- Joint advantage: GAE on the mean of the agents' values V̂_t = 1/n Σ_m V(ô_t^{i_m})
  (mean over the agents alive at t, see death masking below); truncated episodes bootstrap
  from V of info["final_obs"], averaged over the agents alive then (info["final_alive"]).
- Decoder loss (lecture eq. 5): PPO-clip with one ratio per agent r_t^{i_m}, all agents
  sharing the joint advantage Â_t. Encoder and decoder are updated together by one Adam
  step on L_Encoder + L_Decoder - ent_coef * entropy (Algorithm 1, line 22).
- What is shared: everything (MAT is one sequence model over all agents), so there is no
  --share-params switch (no share_params field). Agents are told apart by the one-hot agent
  id appended to their observation (`--add-agent-id`, default on) and, in the decoder, by their position.
- MAT-Dec (`--dec`): the auto-regressive decoder is replaced by a decentralised actor per
  agent (separate weights, evaluated for all agents in one batched matmul) on the agent's
  own representation ô^{i_m}; no action of another agent enters the policy.
- Discrete actions: the decoder token of an action is (0, one-hot(a)), the start token is
  (1, 0, ..., 0); unavailable actions (batch["avail"], also the padding of heterogeneous
  action sets) get logit -1e10 before the softmax.
- Continuous actions: Gaussian with the decoder output as mean and a state-independent
  std = 0.5 * sigmoid(w) with one learnt w per action dimension (as in the paper's code:
  w starts at 1, std ≈ 0.37, bounded in (0, 0.5)). The token of an action is (0, a) with the
  sampled (unclipped) action, padded dimensions zeroed; the start token is (1, 0, ..., 0).
  Actions are clipped to the env's bounds only when stepping the env. Padded action
  dimensions of heterogeneous agents are excluded from log-probabilities and entropies.
- Agent order: fixed (agent 0, 1, ..., n-1) by default; `--shuffle-agent-order` draws a new
  random order for every rollout (used both to act and to train on that rollout).
- Death masking (SMAX): batch["alive"] masks dead agents out of the policy loss, the entropy
  and the mean value V̂_t; dead agents stay in the sequence (their observation is what the env
  gives, their only available action is the env's no-op). The value loss runs over every
  agent, dead ones too (see the differences below).
- Evaluation: greedy (argmax over available actions / the Gaussian mean), in the fixed order.

Deliberate differences from the paper and its official code (PKU-MARL/Multi-Agent-Transformer):
- The official code computes GAE per agent from that agent's own value (with ValueNorm, its
  default); here the policy's advantage is the joint one from the mean value, as in the paper's
  text and the lecture (Algorithm 1, line 19). The value targets stay per agent (λ-returns on
  V(ô^{i_m})).
- Per-agent ratios as in eq. 5: a continuous agent's ratio is that of its whole action
  vector (log-probs summed over its dimensions); the official code takes one ratio per
  action dimension.
- The continuous start token is (1, 0, ..., 0) with an extra "start" flag (the official
  code uses an all-zero action, which a real action of 0 cannot be told apart from).
- MAT-Dec: the official `dec_actor` reads the raw observation; here (as the lecture's
  MAT-Dec figure shows) the per-agent actor reads its representation ô^{i_m} and its gradient also trains
  the encoder.
- The value normaliser is updated once per rollout with all the returns (the official code
  updates it in every minibatch of every epoch, with the same data repeatedly).
- The one-hot agent id is appended to the observation (the official code relies on the env's
  observation, e.g. SMAC's, to identify agents). The global state is not used (as in the
  official code with encode_state=False).
- Discrete logits of unavailable actions are set to -1e10 (as official), greedy evaluation
  picks the argmax; the policy-loss and entropy means run over alive agents.
- Defaults: one setting for every env (8 envs x 100 steps, 10 epochs, 1 minibatch, lr 5e-4,
  clip 0.2, the official config.py's clip). The official training scripts use clip 0.05 on
  every benchmark and set the rest per benchmark: SMAC 32 envs x 100 steps, 15 epochs, lr 5e-4;
  MA-MuJoCo 40 x 100, 10 epochs, 40 minibatches, lr 5e-5, entropy 0.001; MPE 128 x 25,
  10 epochs, lr 7e-4; football 20 x 200, 10 epochs, lr 5e-4 (mat/scripts/train_*.sh).
- The value loss and the value normaliser take every agent's samples, dead ones too (the
  official code masks dead agents out of the value loss, `use_value_active_masks`): an agent's
  per-agent target at its last living step bootstraps from its value after death, the team's
  return to come, so that value must be learned (as in ippo.py, mappo.py). Left out, it stays
  whatever the encoder extrapolates: 7.44 where the return to come averages 2.96 (learned: 2.96)
  in tests/test_mat.py::test_value_of_a_dead_agent_is_learned.
"""

import dataclasses
import os
import random
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.distributions import Categorical, Normal

import envs
from envs import experiment


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled, train on the GPU (an error when torch finds none)"""
    track: bool = False
    """if toggled, mirror the logs to Weights & Biases (needs pip install wandb; WANDB_MODE=offline works offline)"""
    wandb_project_name: str = "marl-pg"
    """the W&B project of --track"""
    wandb_entity: str | None = None
    """the W&B entity (user or team) of --track (None: your default)"""
    torch_threads: int = 1
    """the number of CPU threads torch may use (small networks run fastest on one)"""
    env_id: str = "mpe-spread"
    """the id of the environment; every id: python -c "import envs; print(envs.ids())" (see docs/usage.md)"""
    env_options: tuple[str, ...] = ()
    """options of the env family as KEY=VALUE pairs, e.g. `--env-options agent_obsk=0` (see `help(envs.make)`)"""
    total_timesteps: int = 300_000
    """total env steps of the experiment (one step of all agents in one env counts once)"""
    num_envs: int | None = None
    """the number of parallel environments; unset: 8 (128 on batched envs)"""
    capture_video: bool = False
    """if toggled, save an MP4 of the first episode of each evaluation to <run dir>/videos (MA-MuJoCo and MPE only)"""
    save_model: bool = True
    """if toggled, save the model and its training state to <run dir>/<exp_name>.pt (each eval, the end, Ctrl-C)"""
    eval_episodes: int = 10
    """the number of episodes of each greedy evaluation"""
    eval_interval: int = 0
    """env steps between greedy evaluations (0 = only at the end)"""
    checkpoint: str | None = None
    """path of a saved model to evaluate instead of training"""
    resume: str | None = None
    """path of a run's saved model (runs/<run>/<exp_name>.pt) to continue training that run (docs/usage.md)"""

    # Algorithm specific arguments
    dec: bool = False
    """MAT-Dec: a decentralised per-agent actor on ô^i instead of the auto-regressive decoder"""
    shuffle_agent_order: bool = False
    """draw a random agent order for every rollout (default: the fixed order 0..n-1)"""
    add_agent_id: bool = True
    """append the one-hot agent id to each observation"""
    n_block: int = 1
    """number of transformer blocks in the encoder and in the decoder"""
    n_embd: int = 64
    """embedding size"""
    n_head: int = 1
    """attention heads"""
    num_steps: int | None = None
    """steps per env in each rollout; unset: 100 (25 on batched envs)"""
    learning_rate: float = 5e-4
    """the learning rate of the Adam optimizer"""
    anneal_lr: bool = False
    """linearly anneal the learning rate to 0"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int | None = None
    """the number of mini-batches (of whole time steps, all agents together); unset: 1 (4 on batched envs)"""
    update_epochs: int = 10
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """normalise the joint advantage over the batch"""
    clip_coef: float = 0.2
    """the PPO clipping coefficient (also clips the value change)"""
    clip_vloss: bool = True
    """use the clipped value loss (as in the paper's code)"""
    ent_coef: float = 0.01
    """coefficient of the entropy bonus"""
    vf_coef: float = 1.0
    """coefficient of the encoder (value) loss"""
    max_grad_norm: float = 10.0
    """the maximum norm for the gradient clipping"""
    huber_delta: float = 10.0
    """delta of the Huber value loss"""
    value_norm: bool = True
    """normalise the value targets with running statistics (ValueNorm of the paper's code)"""

    # filled in at runtime
    batch_size: int = 0
    """the batch size (num_envs * num_steps), filled in at runtime"""
    minibatch_size: int = 0
    """the mini-batch size, filled in at runtime"""
    num_iterations: int = 0
    """the number of iterations, filled in at runtime"""


# Rollout flags left unset (None), filled in by envs.experiment.resolve_rollout: "batched" where one
# jitted call steps the whole batch (envs.batched: SMAX, the jax particle worlds), else "plain" (the defaults
# before batching).
# Batched: 16x the envs, a quarter of the steps, 4 minibatches: the same minibatch size and
# PPO gradient steps per env step (docs/throughput.md, "Batched backends").
ROLLOUT_DEFAULTS = {
    "plain": {"num_envs": 8, "num_steps": 100, "num_minibatches": 1},
    "batched": {"num_envs": 128, "num_steps": 25, "num_minibatches": 4},
}


# ------------------------------------------------------------------------------------ networks
def layer_init(layer, std=np.sqrt(2), bias_const=0.0):  # noqa: B008
    torch.nn.init.orthogonal_(layer.weight, std)
    if layer.bias is not None:
        torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention over the agent sequence.

    masked=True: position j attends only to positions <= j (the causal mask of the decoder)."""

    def __init__(self, n_embd: int, n_head: int, masked: bool):
        super().__init__()
        self.n_head, self.masked = n_head, masked
        # small init of the attention projections, as in the paper's code
        self.key = layer_init(nn.Linear(n_embd, n_embd), std=0.01)
        self.query = layer_init(nn.Linear(n_embd, n_embd), std=0.01)
        self.value = layer_init(nn.Linear(n_embd, n_embd), std=0.01)
        self.proj = layer_init(nn.Linear(n_embd, n_embd), std=0.01)

    def forward(self, key, value, query):
        B, L, D = query.shape
        k = self.key(key).view(B, L, self.n_head, -1).transpose(1, 2)  # [B, heads, L, D/heads]
        q = self.query(query).view(B, L, self.n_head, -1).transpose(1, 2)
        v = self.value(value).view(B, L, self.n_head, -1).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / np.sqrt(k.shape[-1])  # [B, heads, L, L]
        if self.masked:
            causal = torch.ones(L, L, dtype=torch.bool, device=att.device).tril()
            att = att.masked_fill(~causal, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


def mlp_block(n_embd: int) -> nn.Sequential:
    return nn.Sequential(layer_init(nn.Linear(n_embd, n_embd)), nn.GELU(), layer_init(nn.Linear(n_embd, n_embd), 0.01))


class EncodeBlock(nn.Module):
    """Unmasked self-attention over the agents' embeddings, then an MLP (post-LayerNorm)."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head, masked=False)
        self.mlp = mlp_block(n_embd)

    def forward(self, x):
        x = self.ln1(x + self.attn(x, x, x))
        return self.ln2(x + self.mlp(x))


class DecodeBlock(nn.Module):
    """Causal self-attention over the action stream, then the representations ô attend to it
    (queries ô, keys/values the action stream, causal mask, as in the paper's code), then an MLP."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn1 = SelfAttention(n_embd, n_head, masked=True)
        self.attn2 = SelfAttention(n_embd, n_head, masked=True)
        self.mlp = mlp_block(n_embd)

    def forward(self, x, rep):
        x = self.ln1(x + self.attn1(x, x, x))
        x = self.ln2(rep + self.attn2(key=x, value=x, query=rep))
        return self.ln3(x + self.mlp(x))


class PerAgentLinear(nn.Module):
    """n independent linear layers, applied to all agents in one batched matmul: [B, n, i] -> [B, n, o]."""

    def __init__(self, n_agents: int, in_dim: int, out_dim: int, std: float = 2**0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_agents, out_dim, in_dim))
        for w in self.weight.data:
            torch.nn.init.orthogonal_(w, std)
        self.bias = nn.Parameter(torch.zeros(n_agents, out_dim))

    def forward(self, x):
        return torch.einsum("bni,noi->bno", x, self.weight) + self.bias


def shift_right(tokens: torch.Tensor) -> torch.Tensor:
    """Decoder input: the action tokens [B, n, D] shifted one agent right, with a start flag.

    Output [B, n, 1 + D]: position 0 is the start token (1, 0, ..., 0); position m is
    (0, token of agent m-1), so agent m's policy sees the actions of agents 0..m-1 only."""
    B, n, D = tokens.shape
    shifted = tokens.new_zeros(B, n, 1 + D)
    shifted[:, 0, 0] = 1.0
    shifted[:, 1:, 1:] = tokens[:, :-1]
    return shifted


class MultiAgentTransformer(nn.Module):
    def __init__(self, in_dim: int, n_agents: int, discrete: bool, act_size: int, args: Args):
        super().__init__()
        E = args.n_embd
        self.n_agents, self.discrete, self.act_size, self.dec = n_agents, discrete, act_size, args.dec
        # ---- encoder: observations -> representations ô and values V(ô)
        self.obs_encoder = nn.Sequential(nn.LayerNorm(in_dim), layer_init(nn.Linear(in_dim, E)), nn.GELU())
        self.enc_ln = nn.LayerNorm(E)
        self.enc_blocks = nn.Sequential(*[EncodeBlock(E, args.n_head) for _ in range(args.n_block)])
        self.value_head = nn.Sequential(
            layer_init(nn.Linear(E, E)), nn.GELU(), nn.LayerNorm(E), layer_init(nn.Linear(E, 1), std=0.01)
        )
        # ---- decoder: shifted actions + ô -> policy of every agent
        if args.dec:  # MAT-Dec: one actor per agent on its own ô^i
            self.actor = nn.Sequential(
                PerAgentLinear(n_agents, E, E), nn.GELU(),
                PerAgentLinear(n_agents, E, E), nn.GELU(),
                PerAgentLinear(n_agents, E, act_size, std=0.01),
            )  # fmt: skip
        else:
            self.action_encoder = nn.Sequential(layer_init(nn.Linear(1 + act_size, E, bias=not discrete)), nn.GELU())
            self.dec_ln = nn.LayerNorm(E)
            self.dec_blocks = nn.ModuleList([DecodeBlock(E, args.n_head) for _ in range(args.n_block)])
            self.policy_head = nn.Sequential(
                layer_init(nn.Linear(E, E)), nn.GELU(), nn.LayerNorm(E), layer_init(nn.Linear(E, act_size), std=0.01)
            )
        if not discrete:
            # std = 0.5 * sigmoid(std_param), one parameter per action dimension (paper's code: init 1)
            self.std_param = nn.Parameter(torch.ones(act_size))

    # ---- encoder
    def encode(self, obs):
        """obs [B, n, in_dim] -> values [B, n] (normalised scale), representations ô [B, n, E]."""
        rep = self.enc_blocks(self.enc_ln(self.obs_encoder(obs)))
        return self.value_head(rep).squeeze(-1), rep

    # ---- decoder
    def decode(self, shifted, rep):
        """Policy outputs (logits or means) [B, L, act_size] of the first L agents.

        shifted [B, L, 1 + act_size]: the shifted action tokens of the first L positions."""
        L = shifted.shape[1]
        x = self.dec_ln(self.action_encoder(shifted))
        rep = rep[:, :L]
        for block in self.dec_blocks:
            x = block(x, rep)
        return self.policy_head(x)

    def tokens(self, actions, act_mask):
        """Decoder tokens of actions: one-hot (discrete) or the action with padded dims zeroed."""
        if self.discrete:
            return F.one_hot(actions, self.act_size).float()
        return actions * act_mask

    def dist(self, out, avail):
        if self.discrete:
            return Categorical(logits=out if avail is None else out.masked_fill(~avail, -1e10))
        return Normal(out, 0.5 * torch.sigmoid(self.std_param).expand_as(out))

    def log_prob_entropy(self, dist, actions, act_mask):
        """Per-agent log-probability of its (whole) action and entropy, padded dims excluded."""
        if self.discrete:
            return dist.log_prob(actions), dist.entropy()
        return (dist.log_prob(actions) * act_mask).sum(-1), (dist.entropy() * act_mask).sum(-1)

    @torch.no_grad()
    def act(self, obs, avail, act_mask, deterministic=False):
        """Inference (Algorithm 1, lines 7-11): actions generated agent by agent.

        Returns actions [B, n] (long) or [B, n, act_size], their log-probs [B, n], values [B, n]."""
        values, rep = self.encode(obs)
        if self.dec:
            dist = self.dist(self.actor(rep), avail)
            actions = self.greedy(dist, avail) if deterministic else dist.sample()
            return actions, self.log_prob_entropy(dist, actions, act_mask)[0], values
        B, n = obs.shape[:2]
        shifted = obs.new_zeros(B, n, 1 + self.act_size)
        shifted[:, 0, 0] = 1.0  # start token
        actions, logps = [], []
        for m in range(n):
            out = self.decode(shifted[:, : m + 1], rep)[:, m]  # agent m sees a^{0..m-1}
            dist = self.dist(out, None if avail is None else avail[:, m])
            a = self.greedy(dist, None if avail is None else avail[:, m]) if deterministic else dist.sample()
            mask_m = None if act_mask is None else act_mask[m]
            logps.append(self.log_prob_entropy(dist, a, mask_m)[0])
            actions.append(a)
            if m + 1 < n:
                shifted[:, m + 1, 1:] = self.tokens(a, mask_m)
        return torch.stack(actions, 1), torch.stack(logps, 1), values

    def greedy(self, dist, avail):
        return dist.probs.argmax(-1) if self.discrete else dist.mean

    def evaluate(self, obs, avail, act_mask, actions):
        """Training (Algorithm 1, lines 17 and 20): one parallel pass on the stored actions.

        Returns log-probs [B, n], entropies [B, n], values [B, n] (normalised scale)."""
        values, rep = self.encode(obs)
        if self.dec:
            out = self.actor(rep)
        else:
            out = self.decode(shift_right(self.tokens(actions, act_mask)), rep)
        logp, entropy = self.log_prob_entropy(self.dist(out, avail), actions, act_mask)
        return logp, entropy, values


class ValueNorm(nn.Module):
    """Running mean/std of the value targets (debiased EMA, as the paper's code's ValueNorm)."""

    def __init__(self, beta: float = 0.99999, epsilon: float = 1e-5):
        super().__init__()
        self.beta, self.epsilon = beta, epsilon
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_mean_sq", torch.zeros(()))
        self.register_buffer("debiasing_term", torch.zeros(()))

    def mean_var(self):
        debias = self.debiasing_term.clamp(min=self.epsilon)
        mean, mean_sq = self.running_mean / debias, self.running_mean_sq / debias
        return mean, (mean_sq - mean**2).clamp(min=1e-2)

    @torch.no_grad()
    def update(self, x):
        self.running_mean.mul_(self.beta).add_(x.mean() * (1 - self.beta))
        self.running_mean_sq.mul_(self.beta).add_((x**2).mean() * (1 - self.beta))
        self.debiasing_term.mul_(self.beta).add_(1 - self.beta)

    def normalize(self, x):
        mean, var = self.mean_var()
        return (x - mean) / var.sqrt()

    def denormalize(self, x):
        mean, var = self.mean_var()
        return x * var.sqrt() + mean


# ------------------------------------------------------------------------------ pure functions
def joint_value(values: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """V̂_t = 1/n Σ_m V(ô_t^{i_m}) over the agents alive at t ([..., n] -> [...]).

    Where no agent is alive (cannot happen mid-episode) the plain mean is used."""
    alive = alive.float()
    count = alive.sum(-1)
    masked_mean = (values * alive).sum(-1) / count.clamp(min=1.0)
    return torch.where(count > 0, masked_mean, values.mean(-1))


def gae(rewards, values, next_values, terminated, dones, gamma: float, gae_lambda: float):
    """Generalised advantage estimation over a rollout with same-step auto-reset.

    rewards, terminated, dones: [T, E]; values, next_values: [T, E] or [T, E, n] (then the team
    reward is used for every agent). next_values[t] is V of the observation after step t in the
    same episode (V of info["final_obs"] where the episode ended). terminated: no bootstrap;
    dones (terminated | truncated): the λ-trace stops."""
    extra = (1,) * (values.dim() - rewards.dim())
    rewards = rewards.reshape(rewards.shape + extra)
    not_term = 1.0 - terminated.float().reshape(terminated.shape + extra)
    not_done = 1.0 - dones.float().reshape(dones.shape + extra)
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in reversed(range(values.shape[0])):
        delta = rewards[t] + gamma * next_values[t] * not_term[t] - values[t]
        last = delta + gamma * gae_lambda * not_done[t] * last
        advantages[t] = last
    return advantages


def huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    return torch.where(x.abs() <= delta, 0.5 * x**2, delta * (x.abs() - 0.5 * delta))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


# ------------------------------------------------------------------------------------- helpers
class Inputs:
    """Turns env batches into network inputs: torch tensors, agent id appended, agent order applied."""

    def __init__(self, env, add_agent_id: bool, device):
        self.n, self.discrete, self.add_agent_id, self.device = env.n_agents, env.discrete, add_agent_id, device
        self.eye = torch.eye(self.n, device=device)
        self.in_dim = env.obs_dim + (self.n if add_agent_id else 0)
        if env.discrete:
            self.act_size, self.act_mask_full = env.n_actions, None
        else:
            self.act_size = env.act_dim
            mask = np.zeros((self.n, env.act_dim), np.float32)
            for i, d in enumerate(env.act_dims):
                mask[i, :d] = 1.0
            self.act_mask_full = torch.as_tensor(mask, device=device)
            self.low = torch.as_tensor(env.act_low, device=device)
            self.high = torch.as_tensor(env.act_high, device=device)
        self.set_order(np.arange(self.n))

    def set_order(self, order: np.ndarray):
        """Sequence position m holds agent order[m]."""
        self.order = torch.as_tensor(order, device=self.device)
        self.inverse = torch.argsort(self.order)
        self.act_mask = None if self.act_mask_full is None else self.act_mask_full[self.order]

    def obs(self, obs_np: np.ndarray) -> torch.Tensor:
        obs = torch.as_tensor(obs_np, device=self.device)
        if self.add_agent_id:
            obs = torch.cat([obs, self.eye.expand(obs.shape[0], -1, -1)], -1)
        return obs[:, self.order]

    def per_agent(self, x_np: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x_np, device=self.device)[:, self.order]

    def avail(self, batch) -> torch.Tensor | None:
        return self.per_agent(batch["avail"]) if self.discrete else None

    def env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """Sequence order -> agent order, clipped to the bounds (continuous), as numpy."""
        actions = actions[:, self.inverse]
        if not self.discrete:
            actions = torch.maximum(torch.minimum(actions, self.high), self.low)
        return actions.cpu().numpy()


def evaluate_policy(model, args: Args, device, video_path: str | None = None) -> dict:
    """Greedy evaluation on a separate env until args.eval_episodes episodes have ended.
    With a video_path, the first episode of env 0 is recorded as well (the numbers do not change)."""
    env = envs.make(
        args.env_id,
        num_envs=max(1, min(args.eval_episodes, 8)),
        seed=args.seed + 10_000,
        **envs.parse_options(args.env_options),
        **experiment.render_options(video_path),
    )
    inputs = Inputs(env, args.add_agent_id, device)
    returns, wins = [], []
    try:
        video = experiment.Video(env, video_path)
        batch = env.reset()
        while len(returns) < args.eval_episodes:
            video.capture()
            actions, _, _ = model.act(inputs.obs(batch["obs"]), inputs.avail(batch), inputs.act_mask, True)
            batch, _, terminated, truncated, info = env.step(inputs.env_actions(actions))
            video.stepped(terminated, truncated)
            if "episode" in info:
                for e in np.flatnonzero(terminated | truncated):
                    returns.append(float(info["episode"]["return"][e]))
                    if "win" in env.metric_names:
                        wins.append(float(info["episode"]["win"][e]))
        video.save()
    finally:
        env.close()
    returns = returns[: args.eval_episodes]
    return {
        "eval_return": float(np.mean(returns)),
        "eval_win_rate": float(np.mean(wins[: args.eval_episodes])) if wins else float("nan"),
    }


def check_args(args: Args) -> None:
    envs.family(args.env_id)  # unknown id -> ValueError listing the valid ids
    if args.capture_video and envs.family(args.env_id) not in ("mamujoco", "mpe"):
        raise ValueError(
            f"capture_video: video is supported for MA-MuJoCo and MPE only, not {args.env_id!r}; drop --capture-video"
        )
    if args.n_embd % args.n_head != 0:
        raise ValueError(f"n_embd ({args.n_embd}) must be a multiple of n_head ({args.n_head})")
    if args.dec and args.shuffle_agent_order:
        raise ValueError("MAT-Dec (--dec) has no agent order to shuffle; drop --shuffle-agent-order")
    if args.num_envs < 1 or args.num_steps < 1:
        raise ValueError("--num-envs and --num-steps must be positive")
    experiment.check_args(args, args.num_envs * args.num_steps)  # budget, learning rates, --cuda


# ---------------------------------------------------------------------------------------- train
def train(args: Args) -> dict:
    resumed = experiment.resume_run(args.resume, "mat", args) if args.resume else None  # the run's own flags
    experiment.resolve_rollout(args, ROLLOUT_DEFAULTS)  # unset rollout flags: by env family
    check_args(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = experiment.device(args.cuda)

    # ---- evaluate a saved model
    if args.checkpoint is not None:
        ckpt = experiment.load_checkpoint(args.checkpoint, "mat", args.env_id)
        saved = dataclasses.replace(Args(), **{k: v for k, v in ckpt["args"].items() if k in Args.__dataclass_fields__})
        arch = {k: getattr(saved, k) for k in ("dec", "add_agent_id", "n_block", "n_embd", "n_head")}
        eval_args = dataclasses.replace(args, **arch)
        probe = envs.make(args.env_id, num_envs=1, seed=args.seed, **envs.parse_options(args.env_options))
        inputs = Inputs(probe, eval_args.add_agent_id, device)
        probe.close()
        model = MultiAgentTransformer(inputs.in_dim, inputs.n, inputs.discrete, inputs.act_size, eval_args).to(device)
        model.load_state_dict(ckpt["model"])
        model.eval()
        run_dir = os.path.dirname(args.checkpoint)  # a video goes next to the model
        video = experiment.video_path(run_dir, "checkpoint") if args.capture_video else None
        result = evaluate_policy(model, eval_args, device, video)
        experiment.print_summary(
            run_dir, 0, result["eval_return"], result["eval_win_rate"], args.eval_episodes, args.checkpoint
        )
        return {
            "run_dir": run_dir, "model_path": args.checkpoint, "global_step": 0,
            "episodic_return": float("nan"), **result,
        }  # fmt: skip

    args.batch_size = args.num_envs * args.num_steps
    args.minibatch_size = max(1, args.batch_size // args.num_minibatches)
    args.num_iterations = max(1, args.total_timesteps // args.batch_size)

    # ---- env, model, optimiser
    next_eval = args.eval_interval if args.eval_interval > 0 else None
    progress = resumed["training"] if resumed else {"global_step": 0, "iteration": 0, "next_eval": next_eval}
    global_step, next_eval = progress["global_step"], progress["next_eval"]
    # a resumed run's envs are seeded past the first run's, so that they do not replay its first episodes
    options = envs.parse_options(args.env_options)
    env = envs.make(args.env_id, num_envs=args.num_envs, seed=args.seed + global_step, **options)
    inputs = Inputs(env, args.add_agent_id, device)
    N, E, T = env.n_agents, args.num_envs, args.num_steps
    if resumed:  # the run's folder; its logs continue after the saved step
        run_dir = os.path.dirname(args.resume)
    else:
        run_dir = experiment.make_run_dir(args.env_id, args.exp_name, args.seed)  # unique, even in the same second
    writer = experiment.make_writer(args, run_dir, purge_step=global_step + 1 if resumed else 0)  # TensorBoard (+ W&B)
    model = MultiAgentTransformer(inputs.in_dim, N, env.discrete, inputs.act_size, args).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, eps=1e-5)
    value_norm = ValueNorm().to(device)
    denormalize = value_norm.denormalize if args.value_norm else (lambda v: v)
    # --shuffle-agent-order draws each rollout's order from numpy's global generator (`rng` below) before the
    # rollout, so the order of the saved iteration is not needed
    if resumed:  # the saved weights (MAT-Dec's actors included), ValueNorm's statistics, optimizer, random generators
        model.load_state_dict(resumed["model"])
        value_norm.load_state_dict(resumed["value_norm"])
        optimizer.load_state_dict(progress["optimizer"])
        experiment.set_rng_state(progress["rng"])

    def save() -> str:  # atomically (a temporary file, then a rename): the model and what --resume needs
        state = dict(global_step=global_step, iteration=iteration, next_eval=next_eval, rng=experiment.rng_state())
        state.update(optimizer=optimizer.state_dict())
        saved = {"algo": "mat", "env_id": args.env_id, "args": dataclasses.asdict(args), "model": model.state_dict(),
                 "value_norm": value_norm.state_dict()}  # fmt: skip
        return experiment.save_checkpoint(os.path.join(run_dir, f"{args.exp_name}.pt"), {**saved, "training": state})

    # ---- rollout storage (in sequence order)
    obs_buf = torch.zeros(T, E, N, inputs.in_dim, device=device)
    avail_buf = torch.ones(T, E, N, max(env.n_actions, 1), dtype=torch.bool, device=device)
    act_shape = (T, E, N) if env.discrete else (T, E, N, env.act_dim)
    actions_buf = torch.zeros(act_shape, dtype=torch.long if env.discrete else torch.float32, device=device)
    logp_buf = torch.zeros(T, E, N, device=device)
    values_buf = torch.zeros(T, E, N, device=device)  # network outputs (normalised scale)
    final_values_buf = torch.zeros(T, E, N, device=device)  # V(final_obs), denormalised, truncated rows
    alive_buf = torch.ones(T, E, N, dtype=torch.bool, device=device)
    final_alive_buf = torch.ones(T, E, N, dtype=torch.bool, device=device)  # alive at an episode's last step
    rewards_buf = torch.zeros(T, E, device=device)
    term_buf = torch.zeros(T, E, dtype=torch.bool, device=device)
    trunc_buf = torch.zeros(T, E, dtype=torch.bool, device=device)

    start_step, start_time = global_step, time.time()
    training = experiment.Training(run_dir, args.num_iterations * args.batch_size, start_step)  # progress bar, Ctrl-C
    recent_returns, recent_lengths, recent_wins = deque(maxlen=20), deque(maxlen=20), deque(maxlen=20)
    result = {"eval_return": float("nan"), "eval_win_rate": float("nan")}
    batch = env.reset()

    for iteration in range(progress["iteration"] + 1, args.num_iterations + 1):
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate
        if args.shuffle_agent_order:  # a new agent order i_1..i_n for this rollout
            inputs.set_order(np.random.permutation(N))

        # ---- rollout (Algorithm 1, lines 4-14)
        model.eval()
        for t in range(T):
            global_step += E
            obs = inputs.obs(batch["obs"])
            avail = inputs.avail(batch)
            actions, logp, values = model.act(obs, avail, inputs.act_mask)
            obs_buf[t], actions_buf[t], logp_buf[t], values_buf[t] = obs, actions, logp, values
            alive_buf[t] = inputs.per_agent(batch["alive"])
            if avail is not None:
                avail_buf[t] = avail
            batch, reward, terminated, truncated, info = env.step(inputs.env_actions(actions))
            rewards_buf[t] = torch.as_tensor(reward, device=device)
            term_buf[t] = torch.as_tensor(terminated, device=device)
            trunc_buf[t] = torch.as_tensor(truncated, device=device)
            final_alive_buf[t] = inputs.per_agent(info["final_alive"])
            if truncated.any():  # bootstrap from the last observation of the truncated episode
                with torch.no_grad():
                    v_final = model.encode(inputs.obs(info["final_obs"]))[0]
                final_values_buf[t] = denormalize(v_final)
            if "episode" in info:  # the episodes that ended at this step: one mean per metric (no per-env loop)
                done = terminated | truncated
                ep = info["episode"]
                recent_returns.extend(ep["return"][done].tolist())
                recent_lengths.extend(ep["length"][done].tolist())
                writer.add_scalar("charts/episodic_return", float(ep["return"][done].mean()), global_step)
                writer.add_scalar("charts/episodic_length", float(ep["length"][done].mean()), global_step)
                if "win" in env.metric_names:
                    recent_wins.extend(ep["win"][done].tolist())
                    writer.add_scalar("charts/win_rate", float(ep["win"][done].mean()), global_step)
                for name in set(env.metric_names) - {"win"}:  # the task's own metrics (traffic waiting time)
                    writer.add_scalar(f"charts/{name}", float(ep[name][done].mean()), global_step)

        # ---- joint advantage and value targets (Algorithm 1, lines 17-19)
        with torch.no_grad():
            next_v = denormalize(model.encode(inputs.obs(batch["obs"]))[0])
            values = denormalize(values_buf)
            next_values = torch.cat([values[1:], next_v[None]], 0)
            next_alive = torch.cat([alive_buf[1:], inputs.per_agent(batch["alive"])[None]], 0)
            dones = term_buf | trunc_buf
            next_values = torch.where(trunc_buf[..., None], final_values_buf, next_values)
            next_alive = torch.where(dones[..., None], final_alive_buf, next_alive)  # the ended episode's agents
            # joint advantage Â_t: GAE on V̂_t = mean of the alive agents' values
            advantages = gae(
                rewards_buf, joint_value(values, alive_buf), joint_value(next_values, next_alive),
                term_buf, dones, args.gamma, args.gae_lambda,
            )  # fmt: skip
            # per-agent value targets: λ-returns of V(ô^{i_m}) (eq. 4 with GAE)
            returns = gae(rewards_buf, values, next_values, term_buf, dones, args.gamma, args.gae_lambda) + values
            if args.value_norm:
                value_norm.update(returns)  # every agent's targets, dead ones too (death masking below)

        # ---- update encoder and decoder together (Algorithm 1, lines 16-22)
        b_obs = obs_buf.reshape(T * E, N, -1)
        b_avail = avail_buf.reshape(T * E, N, -1) if env.discrete else None
        b_actions = actions_buf.reshape((T * E, N) + actions_buf.shape[3:])
        b_logp, b_values = logp_buf.reshape(T * E, N), values_buf.reshape(T * E, N)
        b_alive = alive_buf.reshape(T * E, N).float()
        b_adv = advantages.reshape(T * E)
        if args.norm_adv:
            b_adv = (b_adv - b_adv.mean()) / (b_adv.std(unbiased=False) + 1e-5)
        b_targets = value_norm.normalize(returns) if args.value_norm else returns
        b_targets = b_targets.reshape(T * E, N)
        model.train()
        clipfracs = []
        for _epoch in range(args.update_epochs):
            perm = torch.randperm(T * E, device=device)
            for start in range(0, T * E, args.minibatch_size):
                mb = perm[start : start + args.minibatch_size]
                alive = b_alive[mb]
                logp, entropy, new_values = model.evaluate(
                    b_obs[mb], None if b_avail is None else b_avail[mb], inputs.act_mask, b_actions[mb]
                )
                # decoder loss (eq. 5): per-agent ratios, the joint advantage for every agent
                ratio = (logp - b_logp[mb]).exp()
                adv = b_adv[mb, None]
                clipped = ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = masked_mean(-torch.min(ratio * adv, clipped * adv), alive)
                # encoder loss (eq. 4): Huber regression to the normalised targets, clipped as in the paper's code
                error = b_targets[mb] - new_values
                v_loss = huber(error, args.huber_delta)
                if args.clip_vloss:
                    v_clipped = b_values[mb] + (new_values - b_values[mb]).clamp(-args.clip_coef, args.clip_coef)
                    v_loss = torch.max(v_loss, huber(b_targets[mb] - v_clipped, args.huber_delta))
                # over every agent, dead ones too: an agent's target at its last living step bootstraps
                # from its value after death, the team's return to come, which must be learned
                v_loss = v_loss.mean()
                entropy_loss = masked_mean(entropy, alive)
                loss = pg_loss - args.ent_coef * entropy_loss + args.vf_coef * v_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                with torch.no_grad():
                    clipfracs.append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())

        # ---- logging
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/clipfrac", float(np.mean(clipfracs)), global_step)
        if not env.discrete:
            writer.add_scalar("losses/action_std", (0.5 * torch.sigmoid(model.std_param)).mean().item(), global_step)
        training.update(global_step, recent_returns, recent_wins)
        if training.interrupted:
            break
        if next_eval is not None and global_step >= next_eval and iteration < args.num_iterations:
            model.eval()
            video = experiment.video_path(run_dir, global_step) if args.capture_video else None
            result = evaluate_policy(model, args, device, video)
            experiment.log_eval(writer, global_step, result["eval_return"], result["eval_win_rate"], args.eval_episodes)
            while next_eval <= global_step:
                next_eval += args.eval_interval
            if args.save_model:  # a crash or a kill loses at most the steps since this save (--resume)
                save()

    env.close()
    training.close()
    # ---- save, final evaluation, summary
    model_path = None
    if args.save_model:  # before the evaluation, so that an interrupted run keeps its model too
        model_path = save()
    result = {"eval_return": float("nan"), "eval_win_rate": float("nan")}
    if not training.interrupted:
        model.eval()
        video = experiment.video_path(run_dir, global_step) if args.capture_video else None
        result = evaluate_policy(model, args, device, video)
        experiment.log_eval(writer, global_step, result["eval_return"], result["eval_win_rate"], args.eval_episodes)
    writer.close()
    experiment.print_summary(
        run_dir, global_step, result["eval_return"], result["eval_win_rate"], args.eval_episodes, model_path,
        training.interrupted,
    )  # fmt: skip
    return {
        "run_dir": run_dir,
        "model_path": model_path,
        "global_step": global_step,
        "episodic_return": float(np.mean(recent_returns)) if recent_returns else float("nan"),
        **result,
    }


if __name__ == "__main__":
    with experiment.main():  # a clean exit on Ctrl-C; no run folder left by a failed start
        train(tyro.cli(Args))
