# Kuba et al., "Trust Region Policy Optimisation in Multi-Agent Reinforcement Learning", ICLR 2022: HAPPO
"""HAPPO: Heterogeneous-Agent Proximal Policy Optimisation (the lecture's Algorithm 3).

In the lecture's terms:
- actors: one Gaussian (continuous) or masked categorical (discrete) policy per agent, on the
  agent's own observation; no parameter sharing by default (`--share-params` for comparison,
  with the one-hot agent id appended to the input);
- critic: a single centralised V(s) on the global state, trained after the actors (line 14),
  with GAE(lambda) advantages A(s, a) from it (line 7); with `--state-type FP` (HARL's per-agent
  critic state) one network gives every agent i its own V(s, o^i, i), and agent i its own A^i;
- the multi-agent advantage decomposition (lines 8-13): every iteration draws a random
  permutation i_1..i_n of the agents (`--fixed-order` keeps 0..n-1), sets M^{i_1} = A, and
  agent i_m maximises the PPO-clip objective
      min(r M^{i_1:m}, clip(r, 1 - eps, 1 + eps) M^{i_1:m}),  r = pi_new^{i_m}(a|o) / pi_old^{i_m}(a|o)
  for `update_epochs` epochs of `num_minibatches` minibatches; then
      M^{i_1:m+1} = r(after its update, on the same batch, detached) * M^{i_1:m}
  before the next agent updates (`sequential_update`).

Deliberate differences from the paper and from HARL (github.com/PKU-MARL/HARL), the reference code:
- The Gaussian std is a learned state-independent exp(log_std), initialised at exp(-1) = 0.37;
  HARL uses 0.5 * sigmoid(x) with x initialised at 1 (also 0.37 at the start) which bounds it.
- Advantages are normalised (mean 0, std 1 over the alive samples of the batch) by default
  (`--no-norm-adv` to disable), as HARL does; with one V(s) (EP) once for the team over the steps
  with any agent alive, where HARL normalises inside each agent's update over its alive steps.
- Value normalisation uses exact running mean/variance of the returns, updated once per
  iteration; HARL uses a debiased exponential average (beta 0.99999), updated per minibatch.
- `--state-type FP` builds agent i's critic input from the global state, its observation and its
  one-hot id; HARL's FP state is the env's own agent-specific state (SMAC's `get_state_agent`:
  the state's features relative to agent i), which the env contract here does not provide.
- Truncation: the reward of a truncated step gets gamma * V(final state) added and the trace is
  cut there (time-limit bootstrapping, Pardo et al. 2018). HARL's `use_proper_time_limits` (on in
  its configs) is not the same: it zeroes the advantage at the truncated step (its return target is
  the critic's own V(s_t)) and never reads the final observation.
- `--share-params`: one actor updated once on all agents' samples with M = A, as HARL's MAPPO
  (`share_param_train`) does; HARL's HAPPO with `share_param` instead updates the one shared actor
  agent by agent with the factor M, though each such update also moves the agents already
  updated, which the sequential scheme assumes fixed.
- Dead agents (SMAX, batch["alive"] False) are left out of their actor loss and entropy (HARL's
  policy active masks), and their ratio is taken as 1 in the M factor.
- Defaults are HARL's (num_envs 20, num_steps 200, 5 epochs, 1 minibatch, lr 5e-4, clip 0.2,
  entropy 0.01, Huber(10) clipped value loss, 2x128 ReLU MLPs with LayerNorm); the default env is
  the lecture's product game so that `python happo.py` learns within a minute on a CPU.
- `--init-mean` sets the initial mean of the Gaussian policies (the output bias), for the
  lecture's product-game example (agent 1 at -0.25, agent 2 at 0.25).
"""

import dataclasses
import functools
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
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
    env_id: str = "product-game"
    """the id of the environment; every id: python -c "import envs; print(envs.ids())" (see docs/usage.md)"""
    env_options: tuple[str, ...] = ()
    """options of the env family as KEY=VALUE pairs, e.g. `--env-options agent_obsk=0` (see `help(envs.make)`)"""
    total_timesteps: int = 1_000_000
    """total env steps of the experiment (one step of all agents in one env counts once)"""
    num_envs: int | None = None
    """the number of parallel environments; unset: 20 (128 on batched envs)"""
    capture_video: bool = False
    """if toggled, save an MP4 of the first episode of each evaluation to <run dir>/videos (MA-MuJoCo and MPE only)"""
    save_model: bool = True
    """if toggled, save the model and its training state to <run dir>/<exp_name>.pt (each eval, the end, Ctrl-C)"""
    eval_episodes: int = 20
    """the number of episodes of each greedy evaluation"""
    eval_interval: int = 100_000
    """env steps between greedy evaluations (0 = only at the end)"""
    checkpoint: str | None = None
    """path of a saved model to evaluate instead of training"""
    resume: str | None = None
    """path of a run's saved model (runs/<run>/<exp_name>.pt) to continue training that run (docs/usage.md)"""
    share_params: bool = False
    """one actor shared by all agents (with the one-hot agent id); off in HAPPO"""

    # Algorithm specific arguments
    num_steps: int | None = None
    """the number of steps per env per rollout (HARL's episode_length); unset: 200 (32 on batched envs)"""
    fixed_order: bool = False
    """update the agents in the fixed order 0..n-1 instead of a random permutation"""
    learning_rate: float = 5e-4
    """the actors' learning rate"""
    critic_learning_rate: float = 5e-4
    """the critic's learning rate"""
    anneal_lr: bool = False
    """linear decay of both learning rates to 0"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for GAE"""
    update_epochs: int = 5
    """epochs of each agent's PPO update (HARL's ppo_epoch)"""
    num_minibatches: int = 1
    """minibatches per epoch of each agent's update (HARL's actor_num_mini_batch)"""
    critic_epochs: int = 5
    """epochs of the critic update"""
    critic_num_minibatches: int = 1
    """minibatches per epoch of the critic update"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient epsilon (also the value clipping range)"""
    clip_vloss: bool = True
    """whether to use a clipped value loss"""
    ent_coef: float = 0.01
    """coefficient of the entropy bonus"""
    vf_coef: float = 1.0
    """coefficient of the value loss"""
    max_grad_norm: float = 10.0
    """the maximum norm for gradient clipping"""
    huber_delta: float = 10.0
    """delta of the Huber value loss (0 = squared error)"""
    norm_adv: bool = True
    """normalise the advantages over the batch"""
    value_norm: bool = True
    """normalise the value targets with running statistics"""
    state_type: Literal["EP", "FP"] = "EP"
    """the critic's input (HARL's state_type): EP = the env's global state, one V(s) for the team;
    FP = the global state, agent i's observation and one-hot id: one V(s, o^i, i) per agent"""
    hidden_dim: int = 128
    """width of the two hidden layers of every network"""
    feature_norm: bool = True
    """LayerNorm on the network inputs (HARL's use_feature_normalization)"""
    hidden_norm: bool = True
    """LayerNorm after every hidden layer (HARL's MLP; mappo.py and ippo.py have none)"""
    log_std_init: float = -1.0
    """initial log standard deviation of the Gaussian policies"""
    init_mean: tuple[float, ...] = ()
    """initial mean of the Gaussian policies: one value for all agents or one per agent (empty: 0)"""

    # to be filled in at runtime
    batch_size: int = 0
    """env steps per iteration (filled in at runtime)"""
    minibatch_size: int = 0
    """samples per actor minibatch (filled in at runtime)"""
    num_iterations: int = 0
    """the number of iterations (filled in at runtime)"""


# Rollout flags left unset (None), filled in by envs.experiment.resolve_rollout: "batched" where one
# jitted call steps the whole batch (envs.batched: SMAX, the jax particle worlds), else "plain" (the defaults
# before batching).
# Batched: 6.4x the envs, 0.16x the steps: the same batch (about 4,000 env steps) and updates
# per env step (docs/throughput.md, "Batched backends").
ROLLOUT_DEFAULTS = {
    "plain": {"num_envs": 20, "num_steps": 200},
    "batched": {"num_envs": 128, "num_steps": 32},
}


# the fields that define the networks: taken from the checkpoint when evaluating one
ARCH_FIELDS = ("share_params", "hidden_dim", "feature_norm", "hidden_norm", "log_std_init", "init_mean", "state_type")


# ------------------------------------------------------------------------------ networks
def layer_init(layer, std=2**0.5, bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim: int, hidden: int, feature_norm: bool, hidden_norm: bool = True) -> nn.Sequential:
    """HARL's MLP base: [LayerNorm] -> (Linear -> ReLU -> [LayerNorm]) x 2."""
    norm = (lambda n: nn.LayerNorm(n)) if hidden_norm else (lambda n: nn.Identity())
    return nn.Sequential(
        nn.LayerNorm(in_dim) if feature_norm else nn.Identity(),
        layer_init(nn.Linear(in_dim, hidden)), nn.ReLU(), norm(hidden),
        layer_init(nn.Linear(hidden, hidden)), nn.ReLU(), norm(hidden),
    )  # fmt: skip


class Actor(nn.Module):
    """pi^i(.|o^i): masked categorical (discrete) or Gaussian with a learned log-std (continuous)."""

    def __init__(self, obs_dim, n_out, discrete, hidden, feature_norm, hidden_norm, log_std_init, init_mean=0.0):
        super().__init__()
        self.body = mlp(obs_dim, hidden, feature_norm, hidden_norm)
        self.head = layer_init(nn.Linear(hidden, n_out), std=0.01, bias_const=0.0 if discrete else init_mean)
        self.log_std = None if discrete else nn.Parameter(torch.full((n_out,), float(log_std_init)))

    def forward(self, x, n_act: int, avail=None):
        """The distribution over the first n_act actions (discrete) or action dims (continuous)."""
        out = self.head(self.body(x))[:, :n_act]
        if self.log_std is None:
            if avail is not None:
                out = out.masked_fill(~avail[:, :n_act], -1e10)  # unavailable actions get probability 0
            return Categorical(logits=out)
        return Normal(out, self.log_std[:n_act].exp().expand_as(out))


class HAAgents(nn.Module):
    """The n actors (or one shared actor) and the centralised critic: V(s), or V(s, o^i, i) per agent."""

    def __init__(self, env, args):
        super().__init__()
        self.n_agents, self.share, self.discrete = env.n_agents, args.share_params, env.discrete
        self.obs_dims, self.act_dims = list(env.obs_dims), list(env.act_dims)
        means = initial_means(args.init_mean, env.n_agents)
        kw = dict(discrete=env.discrete, hidden=args.hidden_dim, feature_norm=args.feature_norm,
                  hidden_norm=args.hidden_norm, log_std_init=args.log_std_init)  # fmt: skip
        if self.share:
            in_dim = env.obs_dim + env.n_agents  # padded observation + one-hot agent id
            self.actors = nn.ModuleList([Actor(in_dim, max(self.act_dims), init_mean=means[0], **kw)])
        else:
            self.actors = nn.ModuleList(
                [Actor(self.obs_dims[i], self.act_dims[i], init_mean=means[i], **kw) for i in range(self.n_agents)]
            )
        self.per_agent_values = args.state_type == "FP"
        critic_in = env.state_dim + (env.obs_dim + env.n_agents if self.per_agent_values else 0)
        self.critic = nn.Sequential(
            mlp(critic_in, args.hidden_dim, args.feature_norm, args.hidden_norm),
            layer_init(nn.Linear(args.hidden_dim, 1), std=1.0),
        )
        self.register_buffer("agent_ids", torch.eye(env.n_agents))

    def actor(self, i: int) -> Actor:
        return self.actors[0 if self.share else i]

    def dist(self, i: int, obs, avail=None):
        """pi^i(.|o^i) for agent i's padded observations obs [B, obs_dim] (and avail [B, n_actions])."""
        if self.share:
            x = torch.cat([obs, self.agent_ids[i].expand(obs.shape[0], -1)], 1)
        else:
            x = obs[:, : self.obs_dims[i]]  # the agent's true observation size
        return self.actor(i)(x, self.act_dims[i], avail)

    def log_prob_entropy(self, i: int, dist, action):
        """log pi^i(a|o) and the entropy; padded action dims are not part of agent i's distribution."""
        if self.discrete:
            return dist.log_prob(action), dist.entropy()
        return dist.log_prob(action[:, : self.act_dims[i]]).sum(-1), dist.entropy().sum(-1)

    def value(self, state, obs):
        """V(s) [B] from the states [B, state_dim]; with FP, V(s, o^i, i) [B, N] also from the obs [B, N, obs_dim]."""
        if self.per_agent_values:
            B, N = obs.shape[:2]
            state = torch.cat([state.unsqueeze(1).expand(-1, N, -1), obs, self.agent_ids.expand(B, -1, -1)], -1)
        return self.critic(state).squeeze(-1)

    @torch.no_grad()
    def act(self, obs, avail=None, greedy=False):
        """Joint action [E, N] (long) or [E, N, act_dim] (float, zero padded) and log-probs [E, N]."""
        actions, logps = [], []
        for i in range(self.n_agents):
            dist = self.dist(i, obs[:, i], None if avail is None else avail[:, i])
            if greedy:
                a = dist.probs.argmax(-1) if self.discrete else dist.mean
            else:
                a = dist.sample()
            logps.append(self.log_prob_entropy(i, dist, a)[0])
            if not self.discrete:
                a = nn.functional.pad(a, (0, max(self.act_dims) - a.shape[1]))
            actions.append(a)
        return torch.stack(actions, 1), torch.stack(logps, 1)


def initial_means(init_mean: tuple[float, ...], n_agents: int) -> list[float]:
    """--init-mean: nothing (0 for all), one value for all agents, or one value per agent."""
    if len(init_mean) == 0:
        return [0.0] * n_agents
    if len(init_mean) == 1:
        return [float(init_mean[0])] * n_agents
    if len(init_mean) != n_agents:
        raise ValueError(f"--init-mean needs 1 or n_agents={n_agents} values, got {len(init_mean)}")
    return [float(m) for m in init_mean]


class ValueNorm(nn.Module):
    """Running mean and variance of the value targets (value normalisation, MAPPO/HARL)."""

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))
        self.register_buffer("count", torch.full((), 1e-4, dtype=torch.float64))

    def update(self, x):
        if not self.enabled:
            return
        x = x.double().reshape(-1)
        n, b_mean, b_var = x.numel(), x.mean(), x.var(unbiased=False)
        delta, total = b_mean - self.mean, self.count + x.numel()
        self.var.copy_((self.var * self.count + b_var * n + delta**2 * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.copy_(total)

    def normalize(self, x):
        return ((x - self.mean) / torch.sqrt(self.var + 1e-5)).float() if self.enabled else x

    def denormalize(self, x):
        return (x * torch.sqrt(self.var + 1e-5) + self.mean).float() if self.enabled else x


# ------------------------------------------------------------------- the algorithm's pieces
def masked_mean(x, mask):
    """Mean of x over the samples where mask is True (the alive agents)."""
    x, mask = x.float(), mask.float()
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def compute_gae(rewards, values, dones, next_value, gamma: float, gae_lambda: float):
    """GAE(lambda) advantages and returns. rewards, values, dones [T, E]; next_value [E] = V(s_T).

    dones[t]: the episode ended at step t (on truncation, gamma * V(final state) is already in
    rewards[t]), so nothing is bootstrapped across it.
    """
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        next_v = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_v * nonterminal - values[t]
        last = delta + gamma * gae_lambda * nonterminal * last
        advantages[t] = last
    return advantages, advantages + values


def sequential_update(order, advantages, update_agent: Callable):
    """The multi-agent advantage decomposition (Algorithm 3, lines 9-13).

    advantages [B, N]: column i is the advantage agent i is updated against (the same A in every
    column with one V(s); A^i from V(s, o^i, i) with FP). M^{i_1} = A; for i_m in order:
    update_agent(i_m, M^{i_1:m}) updates agent i_m against column i_m of M and returns its new/old
    probability ratio on the same batch [B] (detached); then M^{i_1:m+1} = ratio * M^{i_1:m}.
    Returns the last M.
    """
    M = advantages.clone()
    for i in order:
        ratio = update_agent(i, M)
        M = ratio.detach().unsqueeze(1) * M
    return M


def happo_policy_loss(ratio, M, alive, clip_coef: float):
    """Algorithm 3 line 11, negated: -mean over alive samples of min(r M, clip(r, 1 +- eps) M)."""
    surrogate = torch.min(ratio * M, ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef) * M)
    return -masked_mean(surrogate, alive)


def value_loss(new_v, old_v, target, clip_coef: float, clip_vloss: bool, huber_delta: float):
    """Critic loss (line 14) on normalised values: Huber (or squared) error, optionally clipped as in PPO."""

    def err(e):
        return nn.functional.huber_loss(e, torch.zeros_like(e), reduction="none", delta=huber_delta) \
            if huber_delta > 0 else 0.5 * e**2  # fmt: skip

    loss = err(target - new_v)
    if clip_vloss:
        clipped = old_v + (new_v - old_v).clamp(-clip_coef, clip_coef)
        loss = torch.max(loss, err(target - clipped))
    return loss.mean()


def agent_batch(data, i, idx):
    """Agent i's samples idx of the batch: observations, available actions, actions, old log-probs, alive."""
    avail = None if data["avail"] is None else data["avail"][idx, i]
    return data["obs"][idx, i], avail, data["act"][idx, i], data["logp"][idx, i], data["alive"][idx, i]


def ppo_update(agents, opt, agent_ids, data, M, args, stats):
    """PPO-clip epochs and minibatches of the agents' policy against M [B, N] (Algorithm 3, line 11).

    agent_ids is [i_m], or every agent when one actor is shared; agent i's samples use column i of M.
    """
    B = data["obs"].shape[0]
    for _ in range(args.update_epochs):
        perm = torch.randperm(B, device=M.device)
        for start in range(0, B, args.minibatch_size):
            idx = perm[start : start + args.minibatch_size]
            loss = 0.0
            for i in agent_ids:
                obs, avail, act, logp_old, alive = agent_batch(data, i, idx)
                logp, entropy = agents.log_prob_entropy(i, agents.dist(i, obs, avail), act)
                log_ratio = logp - logp_old
                ratio = log_ratio.exp()
                pg_loss = happo_policy_loss(ratio, M[idx, i], alive, args.clip_coef)
                ent = masked_mean(entropy, alive)
                loss = loss + (pg_loss - args.ent_coef * ent) / len(agent_ids)
                with torch.no_grad():
                    stats["policy_loss"].append(pg_loss.item())
                    stats["entropy"].append(ent.item())
                    stats["approx_kl"].append(masked_mean((ratio - 1) - log_ratio, alive).item())
                    stats["clipfrac"].append(masked_mean((ratio - 1).abs() > args.clip_coef, alive).item())
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agents.actor(agent_ids[0]).parameters(), args.max_grad_norm)
            opt.step()


def update_agent(agents, optims, data, args, stats, i, M):
    """Update agent i against M (line 11); return its new/old ratio on the same batch (line 12)."""
    ppo_update(agents, optims[i], [i], data, M, args, stats)
    return probability_ratio(agents, i, data)


@torch.no_grad()
def probability_ratio(agents, i, data):
    """pi_new^i(a^i|o^i) / pi_old^i(a^i|o^i) on the whole batch; 1 where agent i is dead."""
    obs, avail, act, logp_old, alive = agent_batch(data, i, slice(None))
    logp_new = agents.log_prob_entropy(i, agents.dist(i, obs, avail), act)[0]
    return torch.where(alive, (logp_new - logp_old).exp(), torch.ones_like(logp_new))


# ------------------------------------------------------------------ evaluation, checkpoints
@torch.no_grad()
def evaluate(agents, args, device, video_path=None):
    """Greedy evaluation on a separate env: (mean return, win rate (nan if none)) over eval_episodes.
    With a video_path, the first episode of env 0 is recorded as well (the numbers do not change)."""
    env = envs.make(
        args.env_id,
        num_envs=max(1, min(args.eval_episodes, 8)),
        seed=args.seed + 10_000,
        **envs.parse_options(args.env_options),
        **experiment.render_options(video_path),
    )
    returns, wins = [], []
    try:
        video = experiment.Video(env, video_path)
        batch = env.reset()
        while len(returns) < args.eval_episodes:
            video.capture()
            obs = torch.as_tensor(batch["obs"], device=device)
            avail = torch.as_tensor(batch["avail"], device=device) if env.discrete else None
            actions, _ = agents.act(obs, avail, greedy=True)
            actions = actions.cpu().numpy()
            if not env.discrete:
                actions = np.clip(actions, env.act_low, env.act_high)
            batch, _, terminated, truncated, info = env.step(actions)
            video.stepped(terminated, truncated)
            for e in np.flatnonzero(terminated | truncated):
                returns.append(float(info["episode"]["return"][e]))
                if "win" in env.metric_names:
                    wins.append(float(info["episode"]["win"][e]))
        video.save()
    finally:
        env.close()
    returns = returns[: args.eval_episodes]
    return float(np.mean(returns)), (float(np.mean(wins[: args.eval_episodes])) if wins else float("nan"))


def check_args(args, env_discrete: bool):
    """Bad input -> a clear ValueError before any work."""
    if args.init_mean and env_discrete:
        raise ValueError("--init-mean sets the mean of Gaussian policies; this env has discrete actions")
    if args.share_params and len(set(args.init_mean)) > 1:
        raise ValueError("--share-params has one actor: give --init-mean a single value")


# ------------------------------------------------------------------------------- training
def train(args: Args) -> dict:
    resumed = experiment.resume_run(args.resume, "happo", args) if args.resume else None  # the run's own flags
    experiment.resolve_rollout(args, ROLLOUT_DEFAULTS)  # unset rollout flags: by env family
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    experiment.check_args(args, args.num_envs * args.num_steps)  # budget, learning rates, --cuda
    device = experiment.device(args.cuda)
    algo = "happo"
    if args.capture_video and envs.family(args.env_id) not in ("mamujoco", "mpe"):
        raise ValueError("--capture-video is supported for MA-MuJoCo and MPE envs only")

    if args.checkpoint:  # evaluate a saved model instead of training
        ckpt = experiment.load_checkpoint(args.checkpoint, algo, args.env_id)
        # checkpoints made before --state-type and --hidden-norm lack them: they had the defaults
        args = dataclasses.replace(args, **{k: ckpt["args"][k] for k in ARCH_FIELDS if k in ckpt["args"]})
        args.init_mean = tuple(args.init_mean)
        probe = envs.make(args.env_id, num_envs=1, seed=args.seed, **envs.parse_options(args.env_options))
        check_args(args, probe.discrete)
        agents = HAAgents(probe, args).to(device)
        probe.close()
        agents.load_state_dict(ckpt["model"])
        run_dir = os.path.dirname(args.checkpoint)  # a video goes next to the model
        video = experiment.video_path(run_dir, "checkpoint") if args.capture_video else None
        eval_return, eval_win = evaluate(agents, args, device, video)
        experiment.print_summary(run_dir, 0, eval_return, eval_win, args.eval_episodes, args.checkpoint)
        return {"run_dir": run_dir, "model_path": args.checkpoint, "global_step": 0, "episodic_return": float("nan"),
                "eval_return": eval_return, "eval_win_rate": eval_win}  # fmt: skip

    progress = resumed["training"] if resumed else {"global_step": 0, "iteration": 0, "next_eval": args.eval_interval}
    global_step, next_eval = progress["global_step"], progress["next_eval"]
    # a resumed run's envs are seeded past the first run's, so that they do not replay its first episodes
    options = envs.parse_options(args.env_options)
    env = envs.make(args.env_id, num_envs=args.num_envs, seed=args.seed + global_step, **options)
    check_args(args, env.discrete)
    initial_means(args.init_mean, env.n_agents)
    E, N, T = args.num_envs, env.n_agents, args.num_steps
    args.batch_size = E * T
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = max(1, args.total_timesteps // args.batch_size)
    for name in [n for n in ("num_minibatches", "critic_num_minibatches") if hasattr(args, n)]:
        if not 1 <= getattr(args, name) <= args.batch_size:
            env.close()
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be between 1 and num_envs * num_steps = {args.batch_size}")
    if resumed:  # the run's folder; its logs continue after the saved step
        run_dir = os.path.dirname(args.resume)
    else:
        run_dir = experiment.make_run_dir(args.env_id, args.exp_name, args.seed)  # unique, even in the same second
    writer = experiment.make_writer(args, run_dir, purge_step=global_step + 1 if resumed else 0)  # TensorBoard (+ W&B)

    agents = HAAgents(env, args).to(device)
    value_norm = ValueNorm(args.value_norm).to(device)
    actor_optims = [torch.optim.Adam(a.parameters(), lr=args.learning_rate, eps=1e-5) for a in agents.actors]
    critic_optim = torch.optim.Adam(agents.critic.parameters(), lr=args.critic_learning_rate, eps=1e-5)
    # the agent order's permutation is drawn from numpy's global generator (`rng` below): no state of its own
    # the latest episodes' returns, lengths and wins: their means are logged, so a resumed run continues them
    recent = recent_returns, recent_lengths, recent_wins = deque(maxlen=20), deque(maxlen=20), deque(maxlen=20)
    if resumed:  # the saved weights, ValueNorm's statistics, every agent's optimizer and the random generators
        agents.load_state_dict(resumed["model"])
        value_norm.load_state_dict(resumed["value_norm"])
        for opt, saved in zip(actor_optims, progress["actor_optims"], strict=True):
            opt.load_state_dict(saved)
        critic_optim.load_state_dict(progress["critic_optim"])
        for d, saved in zip(recent, progress["recent"], strict=True):
            d.extend(saved)
        experiment.set_rng_state(progress["rng"])

    def save() -> str:  # atomically (a temporary file, then a rename): the model and what --resume needs
        state = dict(global_step=global_step, iteration=iteration, next_eval=next_eval, rng=experiment.rng_state())
        state.update(actor_optims=[opt.state_dict() for opt in actor_optims], critic_optim=critic_optim.state_dict())
        state.update(recent=[list(d) for d in recent])
        model = {"algo": algo, "env_id": args.env_id, "args": dataclasses.asdict(args), "model": agents.state_dict(),
                 "value_norm": value_norm.state_dict()}  # fmt: skip
        return experiment.save_checkpoint(os.path.join(run_dir, f"{args.exp_name}.pt"), {**model, "training": state})

    # ------------------------------------------------------------------ rollout storage
    f32 = dict(device=device, dtype=torch.float32)
    obs_buf = torch.zeros((T, E, N, env.obs_dim), **f32)
    state_buf = torch.zeros((T, E, env.state_dim), **f32)
    alive_buf = torch.zeros((T, E, N), dtype=torch.bool, device=device)
    avail_buf = torch.zeros((T, E, N, env.n_actions), dtype=torch.bool, device=device) if env.discrete else None
    if env.discrete:
        act_buf = torch.zeros((T, E, N), dtype=torch.long, device=device)
    else:
        act_buf = torch.zeros((T, E, N, env.act_dim), **f32)
    logp_buf = torch.zeros((T, E, N), **f32)
    per_agent = (N,) if agents.per_agent_values else ()  # FP: values, rewards and ends once per agent
    v_out_buf = torch.zeros((T, E, *per_agent), **f32)  # the critic's (normalised) outputs: the value-clip centre
    value_buf = torch.zeros((T, E, *per_agent), **f32)  # denormalised V(s_t) (or V(s_t, o^i_t, i))
    reward_buf = torch.zeros((T, E, *per_agent), **f32)
    done_buf = torch.zeros((T, E, *per_agent), **f32)

    start_step, start_time = global_step, time.time()
    training = experiment.Training(run_dir, args.num_iterations * args.batch_size, start_step)  # progress bar, Ctrl-C
    batch = env.reset()
    for iteration in range(progress["iteration"] + 1, args.num_iterations + 1):
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            for opt in actor_optims:
                opt.param_groups[0]["lr"] = frac * args.learning_rate
            critic_optim.param_groups[0]["lr"] = frac * args.critic_learning_rate

        # -------------------------------------- Algorithm 3 line 4: collect trajectories with pi_k
        for t in range(T):
            obs = torch.as_tensor(batch["obs"], device=device)
            state = torch.as_tensor(batch["state"], device=device)
            avail = torch.as_tensor(batch["avail"], device=device) if env.discrete else None
            obs_buf[t], state_buf[t] = obs, state
            alive_buf[t] = torch.as_tensor(batch["alive"], device=device)
            if env.discrete:
                avail_buf[t] = avail
            actions, logp = agents.act(obs, avail)
            with torch.no_grad():
                v_out_buf[t] = agents.value(state, obs)
            value_buf[t] = value_norm.denormalize(v_out_buf[t])
            act_buf[t], logp_buf[t] = actions, logp
            actions = actions.cpu().numpy()
            if not env.discrete:
                actions = np.clip(actions, env.act_low, env.act_high)  # log-prob is of the unclipped sample
            batch, reward, terminated, truncated, info = env.step(actions)
            global_step += E
            reward = torch.as_tensor(reward, device=device)
            if agents.per_agent_values:  # FP: the team reward once per agent, for its own value
                reward = reward.unsqueeze(1).repeat(1, N)
            if truncated.any():  # bootstrap from the final state of truncated episodes
                rows = torch.as_tensor(np.flatnonzero(truncated), device=device)
                final_state = torch.as_tensor(info["final_state"], device=device)[rows]
                final_obs = torch.as_tensor(info["final_obs"], device=device)[rows]
                with torch.no_grad():
                    reward[rows] += args.gamma * value_norm.denormalize(agents.value(final_state, final_obs))
            reward_buf[t] = reward
            done = torch.as_tensor(terminated | truncated, **f32)
            done_buf[t] = done.unsqueeze(1) if agents.per_agent_values else done
            if "episode" in info:
                for e in np.flatnonzero(terminated | truncated):
                    recent_returns.append(float(info["episode"]["return"][e]))
                    recent_lengths.append(float(info["episode"]["length"][e]))
                    if "win" in env.metric_names:
                        recent_wins.append(float(info["episode"]["win"][e]))
                    for name in set(env.metric_names) - {"win"}:  # the task's own metrics (traffic waiting time)
                        writer.add_scalar(f"charts/{name}", info["episode"][name][e], global_step)

        # -------------------------------------------------------- line 7: GAE advantages
        with torch.no_grad():
            next_state, next_obs = (torch.as_tensor(batch[k], device=device) for k in ("state", "obs"))
            next_value = value_norm.denormalize(agents.value(next_state, next_obs))
        advantages, returns = compute_gae(reward_buf, value_buf, done_buf, next_value, args.gamma, args.gae_lambda)

        B = T * E
        b_obs, b_alive = obs_buf.reshape(B, N, -1), alive_buf.reshape(B, N)
        b_avail = avail_buf.reshape(B, N, -1) if env.discrete else None
        b_act = act_buf.reshape(B, N, *act_buf.shape[3:])
        b_logp = logp_buf.reshape(B, N)
        b_adv = advantages.reshape(B, *per_agent)
        if args.norm_adv:  # over the samples of alive agents (with one V(s): the steps with any agent alive)
            alive = b_alive if agents.per_agent_values else b_alive.any(1)
            mu = masked_mean(b_adv, alive)
            std = masked_mean((b_adv - mu) ** 2, alive).sqrt()
            b_adv = (b_adv - mu) / (std + 1e-8)
        if not agents.per_agent_values:
            b_adv = b_adv.unsqueeze(1).expand(B, N)  # every agent's column holds the team's A

        data = {"obs": b_obs, "avail": b_avail, "act": b_act, "logp": b_logp, "alive": b_alive}
        stats = {"policy_loss": [], "entropy": [], "approx_kl": [], "clipfrac": []}

        # ------------------------------------------- lines 8-13: the sequential agent updates
        if agents.share:
            # one shared policy: a single update on all agents' samples with M = A
            ppo_update(agents, actor_optims[0], list(range(N)), data, b_adv, args, stats)
        else:
            order = list(range(N)) if args.fixed_order else np.random.permutation(N).tolist()
            sequential_update(order, b_adv, functools.partial(update_agent, agents, actor_optims, data, args, stats))

        # ----------------------------------------------------- line 14: the critic, after the actors
        b_state, b_returns = state_buf.reshape(B, -1), returns.reshape(B, *per_agent)
        # the clip window is centred on the critic's rollout outputs (HARL's value_preds), not on the
        # old values re-normalised with the statistics updated below
        b_old_v = v_out_buf.reshape(B, *per_agent)
        value_norm.update(b_returns)
        b_targets = value_norm.normalize(b_returns)
        critic_mb = B // args.critic_num_minibatches
        v_losses = []
        for _ in range(args.critic_epochs):
            perm = torch.randperm(B, device=device)
            for start in range(0, B, critic_mb):
                idx = perm[start : start + critic_mb]
                v_loss = args.vf_coef * value_loss(
                    agents.value(b_state[idx], b_obs[idx]), b_old_v[idx], b_targets[idx], args.clip_coef,
                    args.clip_vloss, args.huber_delta,
                )  # fmt: skip
                critic_optim.zero_grad()
                v_loss.backward()
                nn.utils.clip_grad_norm_(agents.critic.parameters(), args.max_grad_norm)
                critic_optim.step()
                v_losses.append(v_loss.item())

        # ------------------------------------------------------------------------ logging
        sps = int((global_step - start_step) / (time.time() - start_time))
        mean_return = float(np.mean(recent_returns)) if recent_returns else float("nan")
        writer.add_scalar("charts/SPS", sps, global_step)
        writer.add_scalar("charts/learning_rate", actor_optims[0].param_groups[0]["lr"], global_step)
        if recent_returns:
            writer.add_scalar("charts/episodic_return", mean_return, global_step)
            writer.add_scalar("charts/episodic_length", float(np.mean(recent_lengths)), global_step)
        if recent_wins:
            writer.add_scalar("charts/win_rate", float(np.mean(recent_wins)), global_step)
        writer.add_scalar("losses/value_loss", float(np.mean(v_losses)), global_step)
        for k, v in stats.items():
            writer.add_scalar(f"losses/{k}", float(np.mean(v)), global_step)
        training.update(global_step, recent_returns, recent_wins)
        if training.interrupted:
            break
        if args.eval_interval > 0 and global_step >= next_eval and iteration < args.num_iterations:
            next_eval += args.eval_interval
            video = experiment.video_path(run_dir, global_step) if args.capture_video else None
            eval_return, eval_win = evaluate(agents, args, device, video)
            experiment.log_eval(writer, global_step, eval_return, eval_win, args.eval_episodes)
            if args.save_model:  # a crash or a kill loses at most the steps since this save (--resume)
                save()

    env.close()
    training.close()
    # ----------------------------------------------------------- save, final evaluation, summary
    model_path = None
    if args.save_model:  # before the evaluation, so that an interrupted run keeps its model too
        model_path = save()
    eval_return, eval_win = float("nan"), float("nan")
    if not training.interrupted:
        video = experiment.video_path(run_dir, global_step) if args.capture_video else None
        eval_return, eval_win = evaluate(agents, args, device, video)
        experiment.log_eval(writer, global_step, eval_return, eval_win, args.eval_episodes)
    writer.close()
    experiment.print_summary(
        run_dir, global_step, eval_return, eval_win, args.eval_episodes, model_path, training.interrupted
    )
    return {
        "run_dir": run_dir,
        "model_path": model_path,
        "global_step": global_step,
        "episodic_return": float(np.mean(recent_returns)) if recent_returns else float("nan"),
        "eval_return": eval_return,
        "eval_win_rate": eval_win,
    }


if __name__ == "__main__":
    with experiment.main():  # a clean exit on Ctrl-C; no run folder left by a failed start
        train(tyro.cli(Args))
