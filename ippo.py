# IPPO: de Witt et al., "Is Independent Learning All You Need in the StarCraft Multi-Agent Challenge?", arXiv 2020
"""IPPO: Independent PPO, each agent with a decentralised critic on its own observation.

In the lecture's terms: independent learning; actor loss = PPO-Clip on each agent's policy
pi(a_i | o_i); critic type = V-function on the agent's own observation, V(o_i) (no global
information anywhere); with parameter sharing (default, as in the reference implementations)
one actor and one critic serve all agents, with the one-hot agent id appended to both inputs,
else each agent has its own pair on its true observation/action sizes. Every agent learns from
the shared team reward and treats the other agents as part of the environment.

    A_t^i = GAE(lambda) over delta_t^i = r_t + gamma * V(o^i_{t+1}) - V(o^i_t)
    L_actor = -E[min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)] - c_ent * H[pi],  rho = pi / pi_old
    L_critic = E[max(l(V - R), l(clip(V, V_old +- eps) - R))],  l = Huber or squared error,
               on normalised targets R (ValueNorm)

Reference implementation: the MAPPO paper's code (on-policy/, which runs IPPO as MAPPO with
`use_centralized_V=False`); this file is mappo.py with the critic input changed. Kept from it:
GAE, value normalisation with running statistics (de-normalised for GAE, targets normalised for
the loss), advantage normalisation over the batch, orthogonal init (gain 0.01 on the policy head),
input LayerNorm ("feature normalisation"), Adam eps 1e-5 with separate actor/critic optimisers,
gradient-norm clipping per network, PPO epochs and minibatches, clipped value loss, Huber value
loss (delta 10), death masking (samples of dead agents, batch["alive"] False, do not enter the
policy loss or the entropy), masked categorical actions for unavailable actions, ReLU
activations (config.py's default; its MPE scripts pass `--use_ReLU`, a store_false flag, and so
ran Tanh), the MPE hyper-parameters (lr 7e-4, 10 epochs, 1 minibatch, clip 0.2, entropy 0.01,
gamma 0.99, lambda 0.95, grad-norm 10).

Deliberate differences from the reference code:
- MLP policy and critic (the reference's default is recurrent): the envs here are fully
  observable enough for an MLP, and the file stays short. No LayerNorm between hidden layers.
- Truncated episodes bootstrap from V(final obs) (info["final_obs"]); the reference code
  treats a time-limit end like a termination (no bootstrap) unless `use_proper_time_limits`
  is set (off by default); with it, the advantage of the truncated step is zeroed instead (the
  final observation is never read).
- The value normaliser is updated once per rollout with all returns, before the epochs (the
  reference updates it per minibatch), so the targets stay fixed during an update.
- Minibatches are drawn over env steps, each holding all agents of that step (the reference
  shuffles agent samples individually); this keeps the forward pass batched over agents and is
  the same estimator in expectation.
- The critic is trained on the samples of dead agents too (the reference masks them out of the
  value loss by default, `use_value_active_masks`). GAE bootstraps an agent's last living step
  from its value after death, so that value must be learned: it is the team's return to come.
  Left untrained (a dead agent observes all zeros), it fed back through ValueNorm on smax-2s3z
  until the value scale grew without bound and the run ended in NaN (docs/ippo.md).
- Continuous actions: Gaussian with a learned state-independent log-std initialised at 0; the
  sample is clipped to the action bounds only when sent to the env (log-probs use the
  unclipped sample), padded action dims are excluded from log-probs and entropy.
- Default env mpe-spread with 8 envs x 100 steps per rollout (the reference: 128 envs x 25
  steps), so that `python ippo.py` learns visibly within minutes on a laptop CPU.
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
    eval_interval: int = 50_000
    """env steps between greedy evaluations (0 = only at the end)"""
    checkpoint: str | None = None
    """path of a saved model to evaluate instead of training"""
    resume: str | None = None
    """path of a run's saved model (runs/<run>/<exp_name>.pt) to continue training that run (docs/usage.md)"""
    share_params: bool = True
    """if toggled, one actor and one critic for all agents (the agent's one-hot id is appended to the inputs)"""

    # Algorithm specific arguments
    num_steps: int | None = None
    """the number of steps per env in each rollout; unset: 100 (25 on batched envs)"""
    learning_rate: float = 7e-4
    """the learning rate of the actor optimizer"""
    critic_learning_rate: float = 7e-4
    """the learning rate of the critic optimizer"""
    anneal_lr: bool = False
    """if toggled, linearly anneal the learning rates to 0"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda of GAE(lambda)"""
    update_epochs: int = 10
    """the number of PPO epochs per rollout"""
    num_minibatches: int | None = None
    """the number of minibatches per epoch; unset: 1 (4 on batched envs)"""
    clip_coef: float = 0.2
    """the PPO clipping coefficient epsilon"""
    clip_vloss: bool = True
    """if toggled, use the clipped value loss"""
    huber_loss: bool = True
    """if toggled, use the Huber value loss (else the squared error)"""
    huber_delta: float = 10.0
    """the delta of the Huber loss"""
    norm_adv: bool = True
    """if toggled, normalise the advantages over the batch"""
    value_norm: bool = True
    """if toggled, normalise the value targets with running statistics (the paper's ValueNorm)"""
    ent_coef: float = 0.01
    """the coefficient of the entropy bonus"""
    vf_coef: float = 1.0
    """the coefficient of the value loss"""
    max_grad_norm: float = 10.0
    """the maximum norm of the gradient of each network"""
    hidden_dim: int = 64
    """the width of the two hidden layers of the actor and the critic"""
    feature_norm: bool = True
    """if toggled, apply a LayerNorm to the network inputs (the paper's feature normalisation)"""
    log_std_init: float = 0.0
    """the initial log-std of the Gaussian policy (continuous actions)"""
    init_mean: tuple[float, ...] = ()
    """the initial mean of the Gaussian policy: one value, or one per agent with --no-share-params (empty: 0)"""
    torch_threads: int = 1
    """the number of CPU threads torch may use (small networks run fastest on one)"""

    # to be filled in at runtime
    batch_size: int = 0
    """the env steps per rollout (filled in at runtime)"""
    minibatch_size: int = 0
    """the env steps per minibatch (filled in at runtime)"""
    num_iterations: int = 0
    """the number of rollouts (filled in at runtime)"""


# Rollout flags left unset (None), filled in by envs.experiment.resolve_rollout: "batched" where one
# jitted call steps the whole batch (envs.batched: SMAX, the jax particle worlds), else "plain" (the defaults
# before batching).
# Batched: 16x the envs, a quarter of the steps, 4 minibatches: the same minibatch size and
# PPO gradient steps per env step (docs/throughput.md, "Batched backends").
ROLLOUT_DEFAULTS = {
    "plain": {"num_envs": 8, "num_steps": 100, "num_minibatches": 1},
    "batched": {"num_envs": 128, "num_steps": 25, "num_minibatches": 4},
}


# ----------------------------------------------------------------------------- networks
def layer_init(layer, std=2**0.5, bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim: int, out_dim: int, hidden_dim: int, feature_norm: bool, out_std: float) -> nn.Sequential:
    """[LayerNorm] -> Linear -> ReLU -> Linear -> ReLU -> Linear, orthogonally initialised."""
    return nn.Sequential(
        *([nn.LayerNorm(in_dim)] if feature_norm else []),
        layer_init(nn.Linear(in_dim, hidden_dim)),
        nn.ReLU(),
        layer_init(nn.Linear(hidden_dim, hidden_dim)),
        nn.ReLU(),
        layer_init(nn.Linear(hidden_dim, out_dim), std=out_std),
    )


class ValueNorm(nn.Module):
    """Running mean/std of the value targets (the MAPPO paper's ValueNorm, on-policy/utils/valuenorm.py).

    Exponential moving averages of the mean and the mean square with weight beta, de-biased like
    Adam's moments; the critic learns normalised targets and its output is de-normalised for GAE.
    """

    def __init__(self, beta: float = 0.99999, epsilon: float = 1e-5):
        super().__init__()
        self.beta, self.epsilon = beta, epsilon
        self.register_buffer("running_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("running_mean_sq", torch.zeros((), dtype=torch.float64))
        self.register_buffer("debiasing_term", torch.zeros((), dtype=torch.float64))

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        debias = self.debiasing_term.clamp(min=self.epsilon)
        mean, mean_sq = self.running_mean / debias, self.running_mean_sq / debias
        return mean, (mean_sq - mean**2).clamp(min=1e-2)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        self.running_mean.mul_(self.beta).add_(x.mean() * (1 - self.beta))
        self.running_mean_sq.mul_(self.beta).add_((x**2).mean() * (1 - self.beta))
        self.debiasing_term.mul_(self.beta).add_(1 - self.beta)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return ((x - mean) / var.sqrt()).to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return (x * var.sqrt() + mean).to(x.dtype)


def masked_categorical(logits: torch.Tensor, avail: torch.Tensor) -> Categorical:
    """A categorical over the available actions only: unavailable logits set to -1e10."""
    return Categorical(logits=logits.masked_fill(~avail, -1e10))


class Agent(nn.Module):
    """Decentralised actors pi(a_i | o_i) and decentralised critics V(o_i).

    With share_params: one actor and one critic, both on [padded o_i, onehot(i)].
    Without: actor i and critic i on o_i[:obs_dims[i]], actor i with act_dims[i] outputs.
    Outputs are padded to the largest action size, so every method works on [B, N, ...].
    """

    def __init__(self, env, args: Args):
        super().__init__()
        self.n_agents, self.discrete, self.share = env.n_agents, env.discrete, args.share_params
        self.obs_dims, self.act_dims = list(env.obs_dims), list(env.act_dims)
        self.n_out = env.n_actions if env.discrete else env.act_dim
        N, h, fn = self.n_agents, args.hidden_dim, args.feature_norm
        if self.share:
            self.actors = nn.ModuleList([mlp(env.obs_dim + N, self.n_out, h, fn, 0.01)])
            self.critics = nn.ModuleList([mlp(env.obs_dim + N, 1, h, fn, 1.0)])
            self.log_stds = nn.ParameterList([nn.Parameter(torch.full((self.n_out,), args.log_std_init))])
        else:
            self.actors = nn.ModuleList([mlp(self.obs_dims[i], self.act_dims[i], h, fn, 0.01) for i in range(N)])
            self.critics = nn.ModuleList([mlp(self.obs_dims[i], 1, h, fn, 1.0) for i in range(N)])
            self.log_stds = nn.ParameterList([nn.Parameter(torch.full((d,), args.log_std_init)) for d in self.act_dims])
        if args.init_mean and not self.discrete:  # start the Gaussian means there (the output bias)
            if len(args.init_mean) not in (1, N):
                raise ValueError(f"--init-mean needs 1 or n_agents = {N} values, got {len(args.init_mean)}")
            means = list(args.init_mean) * N if len(args.init_mean) == 1 else list(args.init_mean)
            for actor, mean in zip(self.actors, means):
                nn.init.constant_(actor[-1].bias, mean)
        if self.discrete:
            self.log_stds = nn.ParameterList()  # no Gaussian
        self.register_buffer("agent_ids", torch.eye(N))
        # 1 on an agent's true action dims, 0 on padding (continuous log-probs and entropies)
        act_mask = torch.zeros(N, max(self.n_out, 1))
        for i, d in enumerate(self.act_dims):
            act_mask[i, :d] = 1.0
        self.register_buffer("act_mask", act_mask)
        self.value_norm = ValueNorm()

    def _with_id(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, d] -> [B, N, d + N]: append the one-hot agent id."""
        return torch.cat([x, self.agent_ids.expand(x.shape[0], -1, -1)], dim=-1)

    def actor_out(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [B, N, obs_dim] -> logits or Gaussian means [B, N, n_out] (padded with 0)."""
        if self.share:
            return self.actors[0](self._with_id(obs))
        return torch.stack(
            [F.pad(actor(obs[:, i, : self.obs_dims[i]]), (0, self.n_out - self.act_dims[i]))
             for i, actor in enumerate(self.actors)],
            dim=1,
        )  # fmt: skip

    def log_std(self) -> torch.Tensor:
        """[N, n_out] (padded dims 0)."""
        if self.share:
            return self.log_stds[0].expand(self.n_agents, -1)
        return torch.stack([F.pad(s, (0, self.n_out - s.shape[0])) for s in self.log_stds])

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [B, N, obs_dim] -> normalised V(o_i) [B, N]."""
        if self.share:
            return self.critics[0](self._with_id(obs)).squeeze(-1)
        return torch.cat([critic(obs[:, i, : self.obs_dims[i]]) for i, critic in enumerate(self.critics)], dim=-1)

    def dist(self, obs: torch.Tensor, avail: torch.Tensor | None):
        out = self.actor_out(obs)
        if self.discrete:
            return masked_categorical(out, avail)
        return Normal(out, self.log_std().exp())

    def log_prob(self, dist, action: torch.Tensor) -> torch.Tensor:
        """[B, N] log-probs of the joint action; padded continuous dims excluded."""
        return dist.log_prob(action) if self.discrete else (dist.log_prob(action) * self.act_mask).sum(-1)

    def entropy(self, dist) -> torch.Tensor:
        """[B, N] entropies; padded continuous dims excluded."""
        return dist.entropy() if self.discrete else (dist.entropy() * self.act_mask).sum(-1)

    def act(self, obs, avail, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample (or take the greedy) joint action: [B, N] ints or [B, N, act_dim] floats, and its log-probs."""
        dist = self.dist(obs, avail)
        if greedy:
            action = dist.probs.argmax(-1) if self.discrete else dist.mean
        else:
            action = dist.sample()
        return action, self.log_prob(dist, action)


# ------------------------------------------------------------------ the algorithm's pieces
def compute_gae(rewards, values, next_values, terminated, dones, gamma: float, gae_lambda: float):
    """GAE(lambda) (Schulman et al. 2016, eq. 16) with episode ends inside the rollout.

    All inputs [T, ...] (same shape). values[t] = V(o_t); next_values[t] = V of the observation
    that followed step t: V(o_{t+1}), or on the last step of an episode V(final obs) (used only
    if the episode was truncated, not terminated). dones = terminated | truncated stops the sum.
        delta_t = r_t + gamma * (1 - term_t) * next_values[t] - values[t]
        A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}
    Returns advantages and returns (= advantages + values, the critic's targets).
    """
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * (1.0 - terminated[t]) * next_values[t] - values[t]
        last = delta + gamma * gae_lambda * (1.0 - dones[t]) * last
        advantages[t] = last
    return advantages, advantages + values


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the entries where mask is 1 (death masking)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def ppo_clip_loss(new_logprob, old_logprob, advantages, clip_coef: float, mask):
    """PPO-Clip actor loss: -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)], rho = exp(new - old)."""
    ratio = (new_logprob - old_logprob).exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef) * advantages)
    return -masked_mean(surrogate, mask)


def huber(error: torch.Tensor, delta: float) -> torch.Tensor:
    """e^2/2 for |e| <= delta, delta (|e| - delta/2) beyond (as the paper's code)."""
    a = error.abs()
    return torch.where(a <= delta, 0.5 * error**2, delta * (a - 0.5 * delta))


def value_loss(new_values, old_values, targets, mask, clip_coef: float, clip_vloss: bool, huber_delta: float | None):
    """Critic loss on normalised values: max(l(V - R), l(V_old + clip(V - V_old, +-eps) - R)) if clipped."""
    loss_fn = (lambda e: huber(e, huber_delta)) if huber_delta is not None else (lambda e: 0.5 * e**2)
    loss = loss_fn(new_values - targets)
    if clip_vloss:
        clipped = old_values + (new_values - old_values).clamp(-clip_coef, clip_coef)
        loss = torch.max(loss, loss_fn(clipped - targets))
    return masked_mean(loss, mask)


# ------------------------------------------------------------------------- boilerplate
def to_env_actions(env, action: torch.Tensor) -> np.ndarray:
    """Clip Gaussian samples to the action bounds (only here, at the env); ints pass through."""
    a = action.cpu().numpy()
    return a if env.discrete else np.clip(a, env.act_low, env.act_high)


def evaluate(agent: Agent, args: Args, device, video_path: str | None = None) -> tuple[float, float]:
    """Greedy actions on a separate env until eval_episodes episodes ended: (mean return, win rate).
    With a video_path, the first episode of env 0 is recorded as well (the numbers do not change)."""
    env = envs.make(
        args.env_id,
        num_envs=min(args.eval_episodes, 8),
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
            with torch.no_grad():
                obs = torch.as_tensor(batch["obs"], device=device)
                avail = torch.as_tensor(batch["avail"], device=device) if env.discrete else None
                action, _ = agent.act(obs, avail, greedy=True)
            batch, _, terminated, truncated, info = env.step(to_env_actions(env, action))
            video.stepped(terminated, truncated)
            for e in np.flatnonzero(terminated | truncated):
                returns.append(float(info["episode"]["return"][e]))
                if "win" in env.metric_names:
                    wins.append(float(info["episode"]["win"][e]))
        video.save()
    finally:
        env.close()
    returns = returns[: args.eval_episodes]
    return float(np.mean(returns)), float(np.mean(wins[: args.eval_episodes])) if wins else float("nan")


def check_args(args: Args) -> None:
    family = envs.family(args.env_id)  # raises a ValueError listing the valid ids
    if len(args.init_mean) > 1 and args.share_params:
        raise ValueError("one --init-mean per agent needs --no-share-params (a shared actor has one output bias)")
    if args.capture_video and family not in ("mamujoco", "mpe"):
        raise ValueError(f"--capture-video is supported for MA-MuJoCo and MPE only, not for {args.env_id} ({family})")
    for name in ("num_envs", "num_steps", "update_epochs", "num_minibatches", "eval_episodes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.num_minibatches > args.num_envs * args.num_steps:
        raise ValueError(
            f"--num-minibatches {args.num_minibatches} exceeds the rollout size "
            f"num_envs * num_steps = {args.num_envs * args.num_steps}"
        )
    experiment.check_args(args, args.num_envs * args.num_steps)  # budget, learning rates, --cuda


def result(run_dir, model_path, global_step, episodic_return, eval_return, eval_win_rate) -> dict:
    return {
        "run_dir": run_dir,
        "model_path": model_path,
        "global_step": global_step,
        "episodic_return": episodic_return,
        "eval_return": eval_return,
        "eval_win_rate": eval_win_rate,
    }


def train(args: Args) -> dict:
    resumed = experiment.resume_run(args.resume, "ippo", args) if args.resume else None  # the run's own flags
    experiment.resolve_rollout(args, ROLLOUT_DEFAULTS)  # unset rollout flags: by env family
    check_args(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    torch.distributions.Distribution.set_default_validate_args(False)  # skip per-call argument checks (speed)
    device = experiment.device(args.cuda)

    # ---------------------------------------------------------------- evaluate a checkpoint
    if args.checkpoint is not None:
        ckpt = experiment.load_checkpoint(args.checkpoint, "ippo", args.env_id)
        saved = Args(**{k: v for k, v in ckpt["args"].items() if k in {f.name for f in dataclasses.fields(Args)}})
        with envs.make(args.env_id, num_envs=1, seed=args.seed, **envs.parse_options(args.env_options)) as probe:
            agent = Agent(probe, saved).to(device)
        agent.load_state_dict(ckpt["model"])
        run_dir = os.path.dirname(args.checkpoint)  # a video goes next to the model
        video = experiment.video_path(run_dir, "checkpoint") if args.capture_video else None
        eval_return, eval_win = evaluate(agent, args, device, video)
        experiment.print_summary(run_dir, 0, eval_return, eval_win, args.eval_episodes, args.checkpoint)
        return result(run_dir, args.checkpoint, 0, float("nan"), eval_return, eval_win)

    progress = resumed["training"] if resumed else {"global_step": 0, "iteration": 0, "next_eval": args.eval_interval}
    global_step, next_eval = progress["global_step"], progress["next_eval"]
    # a resumed run's envs are seeded past the first run's, so that they do not replay its first episodes
    options = envs.parse_options(args.env_options)
    env = envs.make(args.env_id, num_envs=args.num_envs, seed=args.seed + global_step, **options)
    E, N, T = args.num_envs, env.n_agents, args.num_steps
    args.batch_size = E * T
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = max(1, -(-args.total_timesteps // args.batch_size))  # at least total_timesteps steps
    if resumed:  # the run's folder; its logs continue after the saved step
        run_dir = os.path.dirname(args.resume)
    else:
        run_dir = experiment.make_run_dir(args.env_id, args.exp_name, args.seed)  # unique, even in the same second
    writer = experiment.make_writer(args, run_dir, purge_step=global_step + 1 if resumed else 0)  # TensorBoard (+ W&B)
    agent = Agent(env, args).to(device)
    actor_params = [*agent.actors.parameters(), *agent.log_stds.parameters()]
    actor_optimizer = torch.optim.Adam(actor_params, lr=args.learning_rate, eps=1e-5)
    critic_optimizer = torch.optim.Adam(agent.critics.parameters(), lr=args.critic_learning_rate, eps=1e-5)
    if resumed:  # the saved weights (ValueNorm's statistics included), optimizers and random generators
        agent.load_state_dict(resumed["model"])
        actor_optimizer.load_state_dict(progress["actor_optimizer"])
        critic_optimizer.load_state_dict(progress["critic_optimizer"])
        experiment.set_rng_state(progress["rng"])

    def save() -> str:  # atomically (a temporary file, then a rename): the model and what --resume needs
        state = dict(global_step=global_step, iteration=iteration, next_eval=next_eval, rng=experiment.rng_state())
        state.update(actor_optimizer=actor_optimizer.state_dict(), critic_optimizer=critic_optimizer.state_dict())
        model = {"algo": "ippo", "env_id": args.env_id, "args": dataclasses.asdict(args), "model": agent.state_dict()}
        return experiment.save_checkpoint(os.path.join(run_dir, f"{args.exp_name}.pt"), {**model, "training": state})

    # ---------------------------------------------------------------- rollout storage
    obs_buf = torch.zeros((T, E, N, env.obs_dim), device=device)
    avail_buf = torch.ones((T, E, N, max(env.n_actions, 1)), dtype=torch.bool, device=device)
    alive_buf = torch.zeros((T, E, N), device=device)
    act_shape = (T, E, N) if env.discrete else (T, E, N, env.act_dim)
    actions_buf = torch.zeros(act_shape, dtype=torch.long if env.discrete else torch.float32, device=device)
    logprobs_buf = torch.zeros((T, E, N), device=device)
    values_buf = torch.zeros((T, E, N), device=device)  # normalised critic outputs
    final_values_buf = torch.zeros((T, E, N), device=device)  # de-normalised V(final obs) on truncation
    rewards_buf = torch.zeros((T, E), device=device)
    terminated_buf = torch.zeros((T, E), device=device)
    dones_buf = torch.zeros((T, E), device=device)

    def denorm(v: torch.Tensor) -> torch.Tensor:
        return agent.value_norm.denormalize(v) if args.value_norm else v

    start_step, start_time = global_step, time.time()
    training = experiment.Training(run_dir, args.num_iterations * args.batch_size, start_step)  # progress bar, Ctrl-C
    recent_returns = deque(maxlen=20)
    recent_wins = deque(maxlen=20)
    batch = env.reset()
    for iteration in range(progress["iteration"] + 1, args.num_iterations + 1):
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            actor_optimizer.param_groups[0]["lr"] = frac * args.learning_rate
            critic_optimizer.param_groups[0]["lr"] = frac * args.critic_learning_rate

        # ------------------------------------------------------------ rollout
        for t in range(T):
            global_step += E
            obs = torch.as_tensor(batch["obs"], device=device)
            obs_buf[t] = obs
            alive_buf[t] = torch.as_tensor(batch["alive"], device=device)
            avail = None
            if env.discrete:
                avail = avail_buf[t] = torch.as_tensor(batch["avail"], device=device)
            with torch.no_grad():
                action, logprob = agent.act(obs, avail)
                values_buf[t] = agent.get_value(obs)
            actions_buf[t], logprobs_buf[t] = action, logprob
            batch, reward, terminated, truncated, info = env.step(to_env_actions(env, action))
            rewards_buf[t] = torch.as_tensor(reward, device=device)
            terminated_buf[t] = torch.as_tensor(terminated, device=device)
            dones_buf[t] = torch.as_tensor(terminated | truncated, device=device)
            final_values_buf[t] = 0.0
            if truncated.any():  # bootstrap from the last observations of truncated episodes
                rows = torch.as_tensor(np.flatnonzero(truncated), device=device)
                with torch.no_grad():
                    final_obs = torch.as_tensor(info["final_obs"], device=device)[rows]
                    final_values_buf[t, rows] = denorm(agent.get_value(final_obs))
            if "episode" in info:
                done = terminated | truncated
                ep = info["episode"]
                recent_returns.extend(ep["return"][done].tolist())
                writer.add_scalar("charts/episodic_return", float(ep["return"][done].mean()), global_step)
                writer.add_scalar("charts/episodic_length", float(ep["length"][done].mean()), global_step)
                if "win" in env.metric_names:
                    recent_wins.extend(ep["win"][done].tolist())
                    writer.add_scalar("charts/win_rate", float(ep["win"][done].mean()), global_step)
                for name in set(env.metric_names) - {"win"}:  # the task's own metrics (traffic waiting time)
                    writer.add_scalar(f"charts/{name}", float(ep[name][done].mean()), global_step)

        # ------------------------------------------------------------ GAE (de-normalised values)
        with torch.no_grad():
            next_value = denorm(agent.get_value(torch.as_tensor(batch["obs"], device=device)))
            values = denorm(values_buf)
            next_values = torch.cat([values[1:], next_value.unsqueeze(0)])
            dones = dones_buf.unsqueeze(-1)  # [T, E, 1], broadcast over agents
            next_values = torch.where(dones.bool(), final_values_buf, next_values)
            advantages, returns = compute_gae(
                rewards_buf.unsqueeze(-1).expand(-1, -1, N), values, next_values,
                terminated_buf.unsqueeze(-1).expand(-1, -1, N), dones.expand(-1, -1, N),
                args.gamma, args.gae_lambda,
            )  # fmt: skip
            if args.value_norm:
                agent.value_norm.update(returns)
                targets = agent.value_norm.normalize(returns)
            else:
                targets = returns
            if args.norm_adv:
                alive = alive_buf.bool()
                adv_mean, adv_std = advantages[alive].mean(), advantages[alive].std()
                advantages = (advantages - adv_mean) / (adv_std.nan_to_num(0.0) + 1e-8)

        # ------------------------------------------------------------ PPO update
        b_obs = obs_buf.flatten(0, 1)
        b_avail, b_alive = avail_buf.flatten(0, 1), alive_buf.flatten(0, 1)
        b_actions, b_logprobs = actions_buf.flatten(0, 1), logprobs_buf.flatten(0, 1)
        b_adv, b_targets, b_values = advantages.flatten(0, 1), targets.flatten(0, 1), values_buf.flatten(0, 1)
        clipfracs, approx_kls = [], []
        for _epoch in range(args.update_epochs):
            perm = torch.randperm(args.batch_size, device=device)
            for start in range(0, args.batch_size - args.minibatch_size + 1, args.minibatch_size):
                mb = perm[start : start + args.minibatch_size]
                mask = b_alive[mb]
                dist = agent.dist(b_obs[mb], b_avail[mb] if env.discrete else None)
                new_logprob, entropy = agent.log_prob(dist, b_actions[mb]), agent.entropy(dist)
                pg_loss = ppo_clip_loss(new_logprob, b_logprobs[mb], b_adv[mb], args.clip_coef, mask)
                entropy_loss = masked_mean(entropy, mask)
                new_values = agent.get_value(b_obs[mb])
                v_loss = value_loss(  # over all samples: GAE bootstraps from dead agents' values too
                    new_values, b_values[mb], b_targets[mb], torch.ones_like(mask), args.clip_coef, args.clip_vloss,
                    args.huber_delta if args.huber_loss else None,
                )  # fmt: skip
                loss = pg_loss - args.ent_coef * entropy_loss + args.vf_coef * v_loss
                actor_optimizer.zero_grad()
                critic_optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(actor_params, args.max_grad_norm)
                nn.utils.clip_grad_norm_(agent.critics.parameters(), args.max_grad_norm)
                actor_optimizer.step()
                critic_optimizer.step()
                with torch.no_grad():
                    log_ratio = new_logprob - b_logprobs[mb]
                    approx_kls.append(masked_mean(log_ratio.exp() - 1 - log_ratio, mask).item())
                    clipfracs.append(masked_mean(((log_ratio.exp() - 1).abs() > args.clip_coef).float(), mask).item())

        # ------------------------------------------------------------ logging
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/learning_rate", actor_optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("charts/SPS", sps, global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/approx_kl", float(np.mean(approx_kls)), global_step)
        writer.add_scalar("losses/clipfrac", float(np.mean(clipfracs)), global_step)
        training.update(global_step, recent_returns, recent_wins)
        if training.interrupted:
            break
        if args.eval_interval > 0 and global_step >= next_eval and iteration < args.num_iterations:
            next_eval += args.eval_interval
            video = experiment.video_path(run_dir, global_step) if args.capture_video else None
            eval_return, eval_win = evaluate(agent, args, device, video)
            experiment.log_eval(writer, global_step, eval_return, eval_win, args.eval_episodes)
            if args.save_model:  # a crash or a kill loses at most the steps since this save (--resume)
                save()

    env.close()
    training.close()
    # ---------------------------------------------------------------- save, final evaluation, summary
    model_path = None
    if args.save_model:  # before the evaluation, so that an interrupted run keeps its model too
        model_path = save()
    eval_return, eval_win = float("nan"), float("nan")
    if not training.interrupted:
        video = experiment.video_path(run_dir, global_step) if args.capture_video else None
        eval_return, eval_win = evaluate(agent, args, device, video)
        experiment.log_eval(writer, global_step, eval_return, eval_win, args.eval_episodes)
    writer.close()
    experiment.print_summary(
        run_dir, global_step, eval_return, eval_win, args.eval_episodes, model_path, training.interrupted
    )
    episodic_return = float(np.mean(recent_returns)) if recent_returns else float("nan")
    return result(run_dir, model_path, global_step, episodic_return, eval_return, eval_win)


if __name__ == "__main__":
    with experiment.main():  # a clean exit on Ctrl-C; no run folder left by a failed start
        train(tyro.cli(Args))
