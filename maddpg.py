# MADDPG: Lowe et al., "Multi-Agent Actor-Critic for Mixed Cooperative-Competitive Environments", NeurIPS 2017
"""MADDPG (Multi-Agent DDPG) for cooperative tasks with a shared team reward.

In the lecture's terms (CTDE table): the actor loss is the deterministic policy gradient
loss, the critic is a centralised Q-function trained on global information and the joint
action, and the actors act on local observations only (decentralised execution).

    critic (TD, off-policy):  L(phi) = E_D[(Q_i(x, a_1..a_N) - y)^2],
                              y = r + gamma * (1 - terminated) * Q'_i(x', mu'_1(o'_1), ..., mu'_N(o'_N))
    actor  (DPG):             L(theta_i) = -E_D[Q_i(x, a_1, .., mu_i(o_i), .., a_N)]  (+ a small L2 on
                              the actor's pre-activations, as in the authors' code)
    targets (Polyak):         theta' <- tau * theta + (1 - tau) * theta'

Default run: `python maddpg.py` trains on product-game (r = a1 * a2, optimum 4) and reaches a
return of ~3.8 (training, with noise) / 3.99 (greedy) within a few thousand steps after the
10k random warm-up steps; larger tasks need e.g. `--total-timesteps 1000000` (mpe-spread).

x is the global state (`--critic-input state`, default, as in EPyMARL) or all agents'
observations concatenated (`--critic-input obs`, the paper's x = (o_1, ..., o_N)).

Actions, chosen from the env:
- continuous: mu_i(o_i) = tanh(.) rescaled to [act_low, act_high]; exploration adds Gaussian
  noise N(0, sigma^2) in the normalised [-1, 1] space (clipped), sigma annealed linearly from
  `exploration_noise` to `exploration_noise_final` over the first `exploration_fraction` of
  training, constant afterwards. Padded action dims are zeroed before the critic.
- discrete: the actor outputs logits; unavailable actions get a large negative logit; a
  Gumbel-softmax sample with the straight-through estimator (forward exactly one-hot, backward
  the gradient of the soft sample) is both the exploration and the differentiable action in
  the actor loss, as in the paper (Appendix) and EPyMARL; target actions and greedy
  evaluation take the argmax over available actions.

Sharing: `--share-params` (default, as in EPyMARL and the lecture's "implementation assuming
that agents share parameters") uses one actor on the zero-padded observation plus the one-hot
agent id; `--no-share-params` gives one actor per agent on its true sizes (the paper).
`--share-critic` (default) uses one critic with the agent id appended (Q_i = Q(x, a, i), as in
EPyMARL); `--no-share-critic` gives one critic per agent (the paper's Q_i). With the team
reward all Q_i estimate the same return. Per-agent networks are stored as stacked weights and
run in one batched matmul (`Linears`), so N networks cost one forward pass.

Death masking (SMAX): the actor loss of agent i is averaged over the samples in which agent i
is alive (batch["alive"]); dead agents can only take the no-op, which the mask already enforces
in the actions. The critic is trained on every agent's samples, dead ones too: the TD target of
an agent's last living step bootstraps from its Q' after death, the team's return to come, so
that value must be learned (as in ippo.py, mappo.py, coma.py). Left out of the loss it stays
whatever the network extrapolates: 6.20 where the return to come averages 2.96 (learned: 2.95)
in tests/test_maddpg.py::test_critic_learns_the_value_of_a_dead_agent.

Deliberate differences from the paper (and from EPyMARL's maddpg):
- cooperative setting only: one team reward, so the critics may be shared (EPyMARL does the same);
- in the actor loss the other agents' actions are the current policies' actions, detached
  (EPyMARL); the paper uses the replay buffer's actions: `--others-from-buffer`;
- MLP actors on the current observation and a transition replay buffer (EPyMARL's maddpg
  samples whole episodes from an episode buffer; its first config's actors are MLPs too,
  `use_rnn: False`); no policy ensembles and no inference of other agents' policies (paper,
  Sections 4.2-4.3);
- uniform random actions for the first `learning_starts` steps (CleanRL's DDPG), Gaussian
  noise instead of the paper's/DDPG's Ornstein-Uhlenbeck process for continuous actions;
- soft target updates with tau 0.01 after every gradient step, as the paper's code (which makes
  one step per 100 transitions, here one per 8: the targets follow the online nets about 12x
  faster per env step) and EPyMARL's first maddpg.yaml (2021); EPyMARL's current one (since March
  2022, `target_update_interval_or_tau: 200`) hard-copies both targets every 200 episodes;
- gamma 0.99 (paper 0.95), Adam lr 1e-3 for both nets (paper 0.01),
  gradient-norm clipping 10 (EPyMARL), batch 256 transitions (paper 1024), `gradient_steps`
  updates every `train_freq` vector steps of num_envs transitions (default: one update per 8
  transitions; the paper's code: one per 100), rewards as they come (EPyMARL standardises them:
  `--standardise-rewards`);
- `--twin-critics` (off by default) adds TD3's clipped double Q (MATD3): two critics on the
  same targets y = r + gamma * min(Q'_1, Q'_2), the actor following Q_1;
- on truncation the critic bootstraps from info["final_obs"/"final_state"], the target actor
  choosing among the actions available at that last step (info["final_avail"]).
"""

import os
import random
import time
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

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
    total_timesteps: int = 30_000
    """total env steps of the experiment (one step of all agents in one env counts once)"""
    # 8 on batched envs too (envs.batched): the time goes to the updates (gradient_steps per num_envs
    # transitions); more envs would only make them rarer per env step (docs/throughput.md, "Batched backends")
    num_envs: int = 8
    """the number of parallel environments"""
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
    share_params: bool = True
    """one actor shared by all agents (with one-hot agent id); else one actor per agent"""

    # Algorithm specific arguments
    share_critic: bool = True
    """one critic shared by all agents (with one-hot agent id); else one critic per agent"""
    critic_input: str = "state"
    """what the critic sees besides the joint action: "state" (global state) or "obs" (all observations)"""
    others_from_buffer: bool = False
    """actor loss: the other agents' actions from the replay buffer (paper) instead of their current policies"""
    buffer_size: int = 1_000_000
    """the replay memory size in transitions"""
    batch_size: int = 256
    """the batch size (transitions) of each gradient step"""
    learning_starts: int = 10_000
    """env steps of uniformly random actions before learning starts"""
    train_freq: int = 1
    """vector-env steps (each num_envs transitions) between updates"""
    gradient_steps: int = 1
    """gradient steps (critic + actor) per update"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.01
    """target smoothing coefficient (Polyak averaging)"""
    learning_rate: float = 1e-3
    """the learning rate of the actor"""
    critic_learning_rate: float = 1e-3
    """the learning rate of the critic"""
    hidden_dim: int = 64
    """hidden units of the two hidden layers (actor and critic)"""
    max_grad_norm: float = 10.0
    """the maximum norm for the gradient clipping"""
    actor_reg: float = 1e-3
    """coefficient of the L2 penalty on the actor's pre-activations (logits / pre-tanh)"""
    exploration_noise: float = 0.3
    """continuous: initial std of the Gaussian exploration noise, in units of half the action range"""
    exploration_noise_final: float = 0.05
    """continuous: final std of the exploration noise"""
    exploration_fraction: float = 0.5
    """continuous: fraction of total_timesteps over which the noise std is annealed linearly"""
    gumbel_temperature: float = 1.0
    """discrete: temperature of the Gumbel-softmax"""
    twin_critics: bool = False
    """clipped double Q (TD3; MATD3, Ackermann et al. 2019): a second critic, targets from the smaller estimate"""
    standardise_rewards: bool = False
    """train the critic on (r - mean) / std, running statistics of the rewards seen (EPyMARL: of each sampled batch)"""

    # filled in at runtime
    num_iterations: int = 0
    """the number of vector-env steps (filled in at runtime)"""


# the Args fields filled in at runtime (checked, and not taken from a resumed run): --batch-size is a flag here
RUNTIME_FIELDS = ("num_iterations",)


# ------------------------------------------------------------------------------ networks
def layer_init(layer, std=2**0.5, bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Linears(nn.Module):
    """G independent linear layers run as one batched matmul: x [G, B, in] -> [G, B, out].

    Layer g is `layer_init`-ed (orthogonal) on its true sizes in_dims[g] x out_dims[g]; the
    padded rows and columns start at zero and, since padded inputs are zero and padded outputs
    are masked, stay there: G networks on their true sizes, at the cost of one forward pass.
    """

    def __init__(self, in_dims: list[int], out_dims: list[int], std: float = 2**0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(len(in_dims), max(in_dims), max(out_dims)))
        self.bias = nn.Parameter(torch.zeros(len(in_dims), 1, max(out_dims)))
        for g, (i, o) in enumerate(zip(in_dims, out_dims)):
            self.weight.data[g, :i, :o] = layer_init(nn.Linear(i, o), std).weight.data.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


def mlp(in_dims: list[int], hidden: int, out_dims: list[int], out_std: float) -> nn.Sequential:
    """G two-hidden-layer ReLU MLPs (G = len(in_dims)), as in the paper (64 units)."""
    h = [hidden] * len(in_dims)
    return nn.Sequential(Linears(in_dims, h), nn.ReLU(), Linears(h, h), nn.ReLU(), Linears(h, out_dims, out_std))


class AgentNets(nn.Module):
    """Per-agent functions f_i(x_i) for x [B, N, in] -> [B, N, out]: one shared network with the
    one-hot agent id appended (share=True), or one network per agent (true sizes in_dims[i],
    out_dims[i]; inputs zero padded)."""

    def __init__(self, n_agents: int, in_dims: list[int], out_dims: list[int], hidden: int, share: bool, out_std):
        super().__init__()
        self.n_agents, self.share = n_agents, share
        if share:
            self.net = mlp([max(in_dims) + n_agents], hidden, [max(out_dims)], out_std)
        else:
            self.net = mlp(in_dims, hidden, out_dims, out_std)
        self.register_buffer("agent_ids", torch.eye(n_agents))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        if self.share:
            x = torch.cat([x, self.agent_ids.expand(B, N, N)], -1).reshape(1, B * N, -1)
            return self.net(x).reshape(B, N, -1)
        return self.net(x.transpose(0, 1)).transpose(0, 1)


class Actor(nn.Module):
    """mu_i(o_i): pre-activations [B, N, act_size] (logits if discrete, pre-tanh if continuous)."""

    def __init__(self, env, hidden: int, share: bool):
        super().__init__()
        act_dims = env.act_dims
        self.net = AgentNets(env.n_agents, env.obs_dims, act_dims, hidden, share, out_std=0.01)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class Critic(nn.Module):
    """Q_i(x, a_1..a_N) for every agent i: x [B, x_dim], joint actions [B, N, N * act_size] (the
    joint action seen by agent i's critic, which may differ per i in the actor loss) -> [B, N]."""

    def __init__(self, env, x_dim: int, act_size: int, hidden: int, share: bool):
        super().__init__()
        N = env.n_agents
        in_dim = x_dim + N * act_size
        self.net = AgentNets(N, [in_dim] * N, [1] * N, hidden, share, out_std=1.0)

    def forward(self, x: torch.Tensor, joint_actions: torch.Tensor) -> torch.Tensor:
        N = joint_actions.shape[1]
        inputs = torch.cat([x[:, None].expand(-1, N, -1), joint_actions], -1)
        return self.net(inputs)[..., 0]


# ------------------------------------------------------------------- pure functions
def gumbel_softmax_st(logits, avail, temperature=1.0, gumbel_noise=None):
    """Straight-through Gumbel-softmax over the available actions.

    Forward: exactly one-hot at argmax((logits + g) / T) (never an unavailable action);
    backward: the gradient of the soft sample softmax((logits + g) / T). `gumbel_noise` g ~
    Gumbel(0, 1) is drawn when not given.
    """
    logits = logits.masked_fill(~avail, -1e10)
    if gumbel_noise is None:
        gumbel_noise = -torch.empty_like(logits).exponential_().log()
    y_soft = F.softmax((logits + gumbel_noise) / temperature, dim=-1)
    y_hard = F.one_hot(y_soft.argmax(-1), logits.shape[-1]).to(logits.dtype)
    # y_soft - y_soft.detach() is exactly 0 forward and passes the soft gradient backward
    return y_hard + (y_soft - y_soft.detach())


def greedy_one_hot(logits, avail):
    """One-hot of the best available action (target actions, evaluation)."""
    logits = logits.masked_fill(~avail, -1e10)
    return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)


def td_target(reward, terminated, next_q, gamma):
    """y = r + gamma * (1 - terminated) * Q'(x', a'): reward, terminated [B]; next_q [B, N].
    Truncated transitions are not terminated: they bootstrap (from the final obs/state)."""
    return reward[:, None] + gamma * (1.0 - terminated[:, None]) * next_q


def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """theta' <- tau * theta + (1 - tau) * theta' for every parameter."""
    with torch.no_grad():
        for tp, p in zip(target.parameters(), online.parameters()):
            tp.mul_(1.0 - tau).add_(p, alpha=tau)


def joint_actions_for_actor_loss(u_pi, u_others):
    """The joint action seen by critic i in agent i's loss: a_j = u_pi_j if j == i else u_others_j.

    u_pi, u_others [B, N, A] -> [B, N(critic i), N * A]; gradients flow only through u_pi_i.
    """
    B, N, A = u_pi.shape
    eye = torch.eye(N, device=u_pi.device)[None, :, :, None]  # [1, i, j, 1]
    joint = eye * u_pi[:, None] + (1.0 - eye) * u_others[:, None]
    return joint.reshape(B, N, N * A)


def noise_std(args: Args, global_step: int) -> float:
    """Exploration noise std (continuous): linear from exploration_noise to exploration_noise_final
    over exploration_fraction * total_timesteps, constant afterwards."""
    frac = min(1.0, global_step / max(1.0, args.exploration_fraction * args.total_timesteps))
    return args.exploration_noise + frac * (args.exploration_noise_final - args.exploration_noise)


class RunningMeanStd:
    """Mean and variance of every value seen so far (Chan et al.'s parallel update), for
    `--standardise-rewards`."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, x: np.ndarray) -> None:
        n, mean, var = x.size, float(x.mean()), float(x.var())
        delta, total = mean - self.mean, self.count + n
        m2 = self.var * self.count + var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


# --------------------------------------------------------------------- replay buffer
class ReplayBuffer:
    """Numpy ring buffer of transitions (o, x, avail, u, r, o', x', avail', terminated, alive).

    u are the critic's action features: one-hot (discrete) or normalised to [-1, 1] (continuous).
    """

    def __init__(self, capacity: int, shapes: dict[str, tuple], dtypes: dict[str, type], seed: int):
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.data = {k: np.zeros((capacity, *shape), dtypes.get(k, np.float32)) for k, shape in shapes.items()}
        self.rng = np.random.default_rng(seed)

    def add(self, **rows: np.ndarray) -> None:
        n = len(next(iter(rows.values())))
        idx = (self.pos + np.arange(n)) % self.capacity
        for k, v in rows.items():
            self.data[k][idx] = v
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, device) -> dict[str, torch.Tensor]:
        idx = self.rng.integers(0, self.size, batch_size)
        return {k: torch.as_tensor(v[idx], device=device) for k, v in self.data.items()}

    def state_dict(self) -> dict:
        """For --resume: the filled rows only (a buffer fills from row 0), the write position, the sampler.
        The rows as tensors (sharing the arrays' memory): torch.save writes those raw, numpy arrays ~1.35x larger."""
        rows = {k: torch.from_numpy(v[: self.size]) for k, v in self.data.items()}
        return dict(data=rows, pos=self.pos, size=self.size, capacity=self.capacity, rng=self.rng.bit_generator.state)

    def load_state_dict(self, state: dict) -> None:
        rows, pos, size = {k: v.numpy() for k, v in state["data"].items()}, state["pos"], state["size"]
        if state["capacity"] != self.capacity:  # a resume with another --total-timesteps (which caps the capacity)
            oldest_first = np.roll(np.arange(size), -pos) if size == state["capacity"] else np.arange(size)
            keep = oldest_first[-self.capacity :]  # the newest rows that fit
            rows, size = {k: v[keep] for k, v in rows.items()}, len(keep)
            pos = size % self.capacity
        for k, v in rows.items():
            self.data[k][:size] = v
        self.pos, self.size = pos, size
        self.rng.bit_generator.state = state["rng"]


# ----------------------------------------------------------------- acting helpers
class Policy:
    """Turns the actor's output into env actions and critic action features (u)."""

    def __init__(self, env, device):
        self.discrete, self.device = env.discrete, device
        if not env.discrete:
            self.low = torch.as_tensor(env.act_low, device=device)
            self.high = torch.as_tensor(env.act_high, device=device)
            mask = np.zeros((env.n_agents, env.act_dim), np.float32)
            for i, d in enumerate(env.act_dims):
                mask[i, :d] = 1.0
            self.act_mask = torch.as_tensor(mask, device=device)  # padded continuous dims -> 0

    def features(self, pre, avail=None, explore=False, temperature=1.0, sigma=0.0):
        """u: continuous tanh(pre) (+ clipped noise), padded dims 0; discrete one-hot (Gumbel ST if explore)."""
        if self.discrete:
            return gumbel_softmax_st(pre, avail, temperature) if explore else greedy_one_hot(pre, avail)
        u = torch.tanh(pre)
        if explore and sigma > 0:
            u = (u + sigma * torch.randn_like(u)).clamp(-1.0, 1.0)
        return u * self.act_mask

    def to_env(self, u: torch.Tensor) -> np.ndarray:
        if self.discrete:
            return u.argmax(-1).cpu().numpy()
        return (self.low + (u + 1.0) * 0.5 * (self.high - self.low)).cpu().numpy()


def critic_x(batch_state, batch_obs, critic_input: str):
    """The critic's global input x: the state, or all observations concatenated."""
    return batch_state if critic_input == "state" else batch_obs.flatten(1)


def make_eval_env(args: Args, video_path: str | None):
    """The separate evaluation env (up to 8 envs), rendering frames where a video is recorded."""
    return envs.make(
        args.env_id,
        num_envs=min(args.eval_episodes, 8),
        seed=args.seed + 10_000,
        **envs.parse_options(args.env_options),
        **experiment.render_options(video_path),
    )


def evaluate(env, actor, policy, args: Args, device, video_path: str | None = None) -> dict[str, float]:
    """Greedy evaluation (no noise; argmax over available actions) until eval_episodes episodes end.
    With `video_path` (env made by make_eval_env(args, video_path)): the first episode of env 0 is
    recorded as well (the numbers do not change)."""
    returns, wins = [], []
    video = experiment.Video(env, video_path)
    batch = env.reset()
    while len(returns) < args.eval_episodes:
        video.capture()
        with torch.no_grad():
            obs = torch.as_tensor(batch["obs"], device=device)
            avail = torch.as_tensor(batch["avail"], device=device) if env.discrete else None
            u = policy.features(actor(obs), avail)
        batch, _, terminated, truncated, info = env.step(policy.to_env(u))
        video.stepped(terminated, truncated)
        for e in np.flatnonzero(terminated | truncated):
            returns.append(float(info["episode"]["return"][e]))
            if "win" in env.metric_names:
                wins.append(float(info["episode"]["win"][e]))
    video.save()
    returns, wins = returns[: args.eval_episodes], wins[: args.eval_episodes]
    return {"return": float(np.mean(returns)), "win_rate": float(np.mean(wins)) if wins else float("nan")}


# ------------------------------------------------------------------------- checks
def check_args(args: Args) -> None:
    envs.family(args.env_id)  # unknown ids raise a ValueError listing the valid ones
    if args.capture_video and envs.family(args.env_id) not in ("mamujoco", "mpe"):
        raise ValueError(f"capture_video is supported for MA-MuJoCo and MPE only, not {args.env_id}")
    if args.critic_input not in ("state", "obs"):
        raise ValueError(f"--critic-input must be 'state' or 'obs', got {args.critic_input!r}")
    for name in ("num_envs", "batch_size", "buffer_size", "train_freq", "eval_episodes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 < args.tau <= 1.0:
        raise ValueError(f"--tau must be in (0, 1], got {args.tau}")
    experiment.check_args(args, args.num_envs, RUNTIME_FIELDS)  # budget, learning rates, --cuda


# -------------------------------------------------------------------------- training
def train(args: Args) -> dict:
    resumed = experiment.resume_run(args.resume, "maddpg", args, RUNTIME_FIELDS) if args.resume else None  # its flags
    check_args(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)
    device = experiment.device(args.cuda)

    # --- evaluate a saved model
    if args.checkpoint:
        ckpt = experiment.load_checkpoint(args.checkpoint, "maddpg", args.env_id)
        saved = Args(**{k: v for k, v in ckpt["args"].items() if k in Args.__dataclass_fields__})
        run_dir = os.path.dirname(args.checkpoint)  # a video goes next to the model
        video = experiment.video_path(run_dir, "checkpoint") if args.capture_video else None
        with make_eval_env(args, video) as eval_env:
            actor = Actor(eval_env, saved.hidden_dim, saved.share_params).to(device)
            actor.load_state_dict(ckpt["model"]["actor"])
            result = evaluate(eval_env, actor, Policy(eval_env, device), args, device, video)
        experiment.print_summary(run_dir, 0, result["return"], result["win_rate"], args.eval_episodes, args.checkpoint)
        return {
            "run_dir": run_dir, "model_path": args.checkpoint, "global_step": 0, "episodic_return": float("nan"),
            "eval_return": result["return"], "eval_win_rate": result["win_rate"],
        }  # fmt: skip

    next_eval = args.eval_interval if args.eval_interval > 0 else None
    progress = resumed["training"] if resumed else {"global_step": 0, "iteration": 0, "next_eval": next_eval}
    global_step, next_eval = progress["global_step"], progress["next_eval"]
    # a resumed run's envs are seeded past the first run's, so that they do not replay its first episodes
    options = envs.parse_options(args.env_options)
    env = envs.make(args.env_id, num_envs=args.num_envs, seed=args.seed + global_step, **options)
    E, N = env.num_envs, env.n_agents
    act_size = env.n_actions if env.discrete else env.act_dim
    x_dim = env.state_dim if args.critic_input == "state" else N * env.obs_dim
    args.num_iterations = args.total_timesteps // E
    if resumed:  # the run's folder; its logs continue after the saved step
        run_dir = os.path.dirname(args.resume)
    else:
        run_dir = experiment.make_run_dir(args.env_id, args.exp_name, args.seed)  # unique, even in the same second
    writer = experiment.make_writer(args, run_dir, purge_step=global_step + 1 if resumed else 0)  # TensorBoard (+ W&B)

    # --- networks: actor, centralised critic, their targets
    actor = Actor(env, args.hidden_dim, args.share_params).to(device)
    critic = Critic(env, x_dim, act_size, args.hidden_dim, args.share_critic).to(device)
    target_actor = Actor(env, args.hidden_dim, args.share_params).to(device)
    target_critic = Critic(env, x_dim, act_size, args.hidden_dim, args.share_critic).to(device)
    target_actor.load_state_dict(actor.state_dict())
    target_critic.load_state_dict(critic.state_dict())
    critics, target_critics = [critic], [target_critic]
    if args.twin_critics:  # Q_2 and its target, trained on the same targets as Q_1
        critics.append(Critic(env, x_dim, act_size, args.hidden_dim, args.share_critic).to(device))
        target_critics.append(Critic(env, x_dim, act_size, args.hidden_dim, args.share_critic).to(device))
        target_critics[1].load_state_dict(critics[1].state_dict())
    critic_params = [p for c in critics for p in c.parameters()]
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.learning_rate, eps=1e-5)
    critic_opt = torch.optim.Adam(critic_params, lr=args.critic_learning_rate, eps=1e-5)
    policy = Policy(env, device)

    # --- replay buffer
    shapes = {
        "obs": (N, env.obs_dim), "state": (env.state_dim,), "u": (N, act_size), "reward": (), "terminated": (),
        "next_obs": (N, env.obs_dim), "next_state": (env.state_dim,), "alive": (N,),
    }  # fmt: skip
    dtypes = {"alive": bool}
    if env.discrete:
        shapes.update(avail=(N, act_size), next_avail=(N, act_size))
        dtypes.update(avail=bool, next_avail=bool)
    rb = ReplayBuffer(min(args.buffer_size, max(args.total_timesteps, E)), shapes, dtypes, args.seed)
    reward_stats = RunningMeanStd()
    nets = {"actor": actor, "critic": critic, "target_actor": target_actor, "target_critic": target_critic}
    if args.twin_critics:
        nets.update(critic2=critics[1], target_critic2=target_critics[1])
    if resumed:  # the saved weights (targets included), optimizers, replay buffer, reward statistics, generators
        for k, m in nets.items():
            m.load_state_dict(resumed["model"][k])
        actor_opt.load_state_dict(progress["actor_optimizer"])
        critic_opt.load_state_dict(progress["critic_optimizer"])
        rb.load_state_dict(progress["replay_buffer"])
        reward_stats.load_state_dict(progress["reward_stats"])
        experiment.set_rng_state(progress["rng"])

    # The replay buffer goes into the checkpoint's "training" entry: one file, written atomically, can never
    # hold a model and a buffer of different steps (as two files could after a kill between their writes).
    # Its cost: the filled rows, 97 MB on mpe-spread at 1e5 steps (~1 KB a transition), read with the model.
    def save() -> str:  # atomically (a temporary file, then a rename): the model and what --resume needs
        state = dict(global_step=global_step, iteration=iteration, next_eval=next_eval, rng=experiment.rng_state())
        state.update(actor_optimizer=actor_opt.state_dict(), critic_optimizer=critic_opt.state_dict())
        state.update(replay_buffer=rb.state_dict(), reward_stats=reward_stats.state_dict(), losses=losses)
        weights = {k: m.state_dict() for k, m in nets.items()}
        model = {"algo": "maddpg", "env_id": args.env_id, "args": asdict(args), "model": weights}
        return experiment.save_checkpoint(os.path.join(run_dir, f"{args.exp_name}.pt"), {**model, "training": state})

    def update() -> dict[str, torch.Tensor]:
        b = rb.sample(args.batch_size, device)
        alive = b["alive"].float()
        n_alive = alive.sum().clamp(min=1.0)
        # critic: TD target from the target actor and target critic (eq. 6 of the paper)
        with torch.no_grad():
            pre_next = target_actor(b["next_obs"])
            u_next = policy.features(pre_next, b.get("next_avail"))
            B = u_next.shape[0]
            x_next = critic_x(b["next_state"], b["next_obs"], args.critic_input)
            u_next = u_next.reshape(B, 1, -1).expand(-1, N, -1)
            # one critic: Q'_i; twin critics: min(Q'_1, Q'_2), against overestimation (TD3, eq. 10)
            q_next = torch.stack([tc(x_next, u_next) for tc in target_critics]).min(0).values
            reward = b["reward"]
            if args.standardise_rewards:
                reward = (reward - reward_stats.mean) / (reward_stats.var**0.5 + 1e-8)
            y = td_target(reward, b["terminated"], q_next, args.gamma)
        x = critic_x(b["state"], b["obs"], args.critic_input)
        u = b["u"].reshape(B, 1, -1).expand(-1, N, -1)
        qs = [c(x, u) for c in critics]
        # over every agent, dead ones too: y of an agent's last living step bootstraps from its Q' after death
        qf_loss = sum(((q - y) ** 2).mean() for q in qs)
        critic_opt.zero_grad()
        qf_loss.backward()
        nn.utils.clip_grad_norm_(critic_params, args.max_grad_norm)
        critic_opt.step()

        # actor: deterministic policy gradient through Q_i(x, ..., mu_i(o_i), ...) (eq. 5)
        pre = actor(b["obs"])
        u_pi = policy.features(pre, b.get("avail"), explore=env.discrete, temperature=args.gumbel_temperature)
        u_others = b["u"] if args.others_from_buffer else u_pi.detach()
        q_pi = critic(x, joint_actions_for_actor_loss(u_pi, u_others))
        if env.discrete:
            reg = (pre**2 * b["avail"]).sum() / b["avail"].sum()
        else:
            reg = (pre**2 * policy.act_mask).sum() / (policy.act_mask.sum() * B)
        actor_loss = -(q_pi * alive).sum() / n_alive + args.actor_reg * reg
        actor_opt.zero_grad()
        actor_loss.backward()
        nn.utils.clip_grad_norm_(actor.parameters(), args.max_grad_norm)
        actor_opt.step()

        for tc, c in zip(target_critics, critics):
            polyak_update(tc, c, args.tau)
        polyak_update(target_actor, actor, args.tau)
        return {"qf_loss": qf_loss.detach(), "actor_loss": actor_loss.detach(), "qf_values": qs[0].detach().mean()}

    # --- the off-policy loop
    recent_returns, recent_wins = deque(maxlen=20), deque(maxlen=20)
    losses = progress["losses"] if resumed else {}  # the latest update's, logged until the next update
    start_step, start_time, last_print = global_step, time.time(), 0.0
    training = experiment.Training(run_dir, args.num_iterations * E, start_step)  # progress bar, Ctrl-C
    batch = env.reset()
    iteration = progress["iteration"]  # as saved, if a larger --total-timesteps adds no whole iteration to a resume
    for iteration in range(progress["iteration"] + 1, args.num_iterations + 1):
        global_step += E
        with torch.no_grad():
            obs_t = torch.as_tensor(batch["obs"], device=device)
            avail_t = torch.as_tensor(batch["avail"], device=device) if env.discrete else None
            if global_step <= args.learning_starts:  # uniform random actions (CleanRL's DDPG warm-up)
                if env.discrete:
                    u = greedy_one_hot(torch.rand(avail_t.shape, device=device), avail_t)
                else:
                    u = (torch.rand((E, N, act_size), device=device) * 2 - 1) * policy.act_mask
            else:
                sigma = noise_std(args, global_step)
                u = policy.features(actor(obs_t), avail_t, True, args.gumbel_temperature, sigma)
        next_batch, reward, terminated, truncated, info = env.step(policy.to_env(u))

        # store (o, x, u, r, o', x') with the final obs/state (and avail) of ended episodes as o', x'
        row = {
            "obs": batch["obs"], "state": batch["state"], "u": u.cpu().numpy(), "reward": reward,
            "terminated": terminated.astype(np.float32), "next_obs": info["final_obs"],
            "next_state": info["final_state"], "alive": batch["alive"],
        }  # fmt: skip
        if env.discrete:
            row.update(avail=batch["avail"], next_avail=info["final_avail"])
        rb.add(**row)
        if args.standardise_rewards:
            reward_stats.update(reward)
        batch = next_batch

        if "episode" in info:
            for e in np.flatnonzero(terminated | truncated):
                recent_returns.append(float(info["episode"]["return"][e]))
                writer.add_scalar("charts/episodic_return", info["episode"]["return"][e], global_step)
                writer.add_scalar("charts/episodic_length", info["episode"]["length"][e], global_step)
                if "win" in env.metric_names:
                    recent_wins.append(float(info["episode"]["win"][e]))
                    writer.add_scalar("charts/win_rate", info["episode"]["win"][e], global_step)
                for name in set(env.metric_names) - {"win"}:  # the task's own metrics (traffic waiting time)
                    writer.add_scalar(f"charts/{name}", info["episode"][name][e], global_step)

        if global_step > args.learning_starts and rb.size >= args.batch_size and iteration % args.train_freq == 0:
            for _ in range(args.gradient_steps):
                losses = update()

        if next_eval is not None and global_step >= next_eval and iteration < args.num_iterations:
            next_eval += args.eval_interval
            video = experiment.video_path(run_dir, global_step) if args.capture_video else None
            with make_eval_env(args, video) as eval_env:
                ev = evaluate(eval_env, actor, policy, args, device, video)
            experiment.log_eval(writer, global_step, ev["return"], ev["win_rate"], args.eval_episodes)
            if args.save_model:  # a crash or a kill loses at most the steps since this save (--resume)
                save()

        if training.interrupted:
            break
        if time.time() - last_print > 1.0 or iteration == args.num_iterations:
            last_print = time.time()
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("charts/learning_rate", args.learning_rate, global_step)
            if not env.discrete:
                writer.add_scalar("charts/exploration_noise", noise_std(args, global_step), global_step)
            for k, v in losses.items():
                writer.add_scalar(f"losses/{k}", v.item(), global_step)
            training.update(global_step, recent_returns, recent_wins)

    env.close()
    training.close()
    # --- save, final evaluation, summary
    model_path = None
    if args.save_model:  # before the evaluation, so that an interrupted run keeps its model too
        model_path = save()
    ev = {"return": float("nan"), "win_rate": float("nan")}
    if not training.interrupted:
        video = experiment.video_path(run_dir, global_step) if args.capture_video else None
        with make_eval_env(args, video) as eval_env:
            ev = evaluate(eval_env, actor, policy, args, device, video)
        experiment.log_eval(writer, global_step, ev["return"], ev["win_rate"], args.eval_episodes)
    writer.close()
    experiment.print_summary(
        run_dir, global_step, ev["return"], ev["win_rate"], args.eval_episodes, model_path, training.interrupted
    )
    return {
        "run_dir": run_dir,
        "model_path": model_path,
        "global_step": global_step,
        "episodic_return": float(np.mean(recent_returns)) if recent_returns else float("nan"),
        "eval_return": ev["return"],
        "eval_win_rate": ev["win_rate"],
    }


if __name__ == "__main__":
    with experiment.main():  # a clean exit on Ctrl-C; no run folder left by a failed start
        train(tyro.cli(Args))
