# COMA: Counterfactual Multi-Agent Policy Gradients (Foerster, Farquhar, Afouras, Nardelli, Whiteson; AAAI 2018)
"""COMA: an actor-critic with a centralised Q-critic and a counterfactual baseline.

In the lecture's terms (CTDE, table "Actor loss / Critic type"):
- Actor pi^i(u^i | tau^i) on the agent's local history tau^i: a GRU over (observation,
  previous action one-hot, agent id) by default (`--no-use-rnn`: an MLP on the same inputs).
  Parameters shared by all agents by default, as in the paper (`--no-share-params`: one
  actor per agent on its true observation/action sizes, no id).
- Critic (Q-function, centralised, one network shared by all agents): Q(s, u^-i, o^i, i, u_{t-1})
  with inputs state s, the agent's observation o^i, the other agents' actions one-hot (agent
  i's own block masked out), agent id and all agents' previous actions; it outputs Q for every
  action u'^i of agent i in one forward pass, so the counterfactual baseline costs one pass:
      b^i(s, u^-i) = sum_{u'^i} pi^i(u'^i | tau^i) Q(s, (u^-i, u'^i))
      A^i(s, u)    = Q(s, u) - b^i(s, u^-i)                                (lecture, COMA)
  Actor loss: -E[A^i log pi^i(u^i | tau^i)] (A^i detached), minus an optional entropy bonus.
- Critic targets: TD(lambda) returns from a target network (hard copy every
  `target_update_interval` critic updates), regression loss (Q(s_t, u_t) - G^lambda_t)^2.
- Discrete actions only (the baseline sums over the action set); unavailable actions (batch
  "avail") get probability exactly zero, so they drop out of the baseline sum too.

Rollouts (the simplest correct scheme for the env contract's same-step auto-reset): every
iteration collects a fixed `num_steps` T steps from each of the E envs. The GRU hidden state
is carried across iterations and reset to zero where an episode ended; the previous action
input is zero at an episode's first step. For the update the GRU is re-run over the T stored
steps from the hidden state stored at the start of the rollout (as CleanRL's LSTM PPO does;
that stored state was computed by the previous actor, a small staleness the paper's
whole-episode batches avoid).
The TD(lambda) recursion is cut at episode ends and at the end of the rollout:
  - termination: no bootstrap;
  - truncation (time limit): bootstrap from Q_target(final_state, u_final), where u_final is
    sampled from the current policy at info["final_obs"] among info["final_avail"] (sampled,
    never executed, as EPyMARL's runner does at the last step of an episode);
  - an episode still running at the end of the rollout: bootstrap from Q_target(s_T, u_T), u_T
    sampled (not executed; the next iteration samples again with the updated policy).
  Inside an episode: G_t = r_t + gamma [(1 - lambda) Q_target(s_{t+1}, u_{t+1}) + lambda G_{t+1}].

Exploration as in the paper and pymarl (EPyMARL's COMA samples the plain masked softmax and
adds an entropy bonus instead): the policy is mixed with a uniform distribution over the
available actions, pi = (1 - eps) softmax + eps / |avail|, eps annealed linearly from
`epsilon_start` to `epsilon_finish` (pymarl's 0.5 and 0.01; over 50k env steps here, 100k in
pymarl); this mixed pi is used for sampling, log pi and the baseline (as in pymarl, which mixes
over all actions and renormalises over the available ones). Evaluation is greedy (argmax over
available actions).

Logging: charts/episodic_return (and _length, win_rate) is one point per iteration, the mean of
the episodes that ended in it (one point per episode would flood TensorBoard on one-step games).

Death masking (SMAX): steps where batch["alive"] is False for agent i are excluded from agent
i's actor loss. The critic is trained on every step (a dead agent's only action is no-op and
its Q(s, u) is still the team's Q; keeping it trained keeps the TD bootstrap values sane).

Default env: matrix-climbing, where COMA goes from -3.44 (random) to the safe equilibrium 5
within ~40k steps (like other policy-gradient methods it does not find the optimum 11). On
mpe-spread it learns slowly (measured: training return -28 -> -22 and greedy -24 after 100k
steps at default settings: `python coma.py --env-id mpe-spread --total-timesteps 100000`).

Deliberate differences from the paper and EPyMARL's COMA:
- Fixed-length rollouts of T steps per env (bootstrapped from the target critic) instead of
  batches of whole episodes padded to the episode limit.
- One full-batch critic gradient step per iteration (`critic_updates` of them) instead of the
  paper's / pymarl's sequential per-timestep critic updates (reverse time order); the
  advantage uses the critic after its update.
- Adam (eps 1e-5) instead of the paper's / pymarl's RMSprop (EPyMARL: Adam, PyTorch's default
  eps); gradient norm clipped to `max_grad_norm` (pymarl: 10).
- TD(lambda) (paper, pymarl, lambda = 0.8) rather than EPyMARL's n-step returns; an optional
  entropy bonus (`ent_coef`, off by default as in the paper), computed on the masked softmax
  before the epsilon mix. EPyMARL's coma.yaml changed: its first version (June 2021, the
  benchmark paper's code) has entropy 0.01, `q_nstep: 5`, lr 5e-4; since March 2022 (and in its
  v1.0.0 and v2.0.0 releases) 0.001, `q_nstep: 10`, lr 3e-4.
- Hard target copy every `target_update_interval` = 20 critic updates, i.e. every 4,000 env
  steps at the defaults (8 envs x 25 steps per update); pymarl copies every 200 of its
  per-timestep critic updates (one per timestep of a batch of 8 episodes: about every 1,600 env
  steps), EPyMARL every 200 training batches of 10 episodes (2,000 episodes).
- With --no-share-params only the actor is per agent; the centralised critic is always one
  network with the agent id as input (as in the paper).
"""

from __future__ import annotations

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

import envs
from envs import experiment

CONTINUOUS_ALGOS = "ia2c, ippo, maa2c, mappo, maddpg, happo, hatrpo, mat"


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
    env_id: str = "matrix-climbing"
    """the id of the environment; every id: python -c "import envs; print(envs.ids())" (see docs/usage.md)"""
    env_options: tuple[str, ...] = ()
    """options of the env family as KEY=VALUE pairs, e.g. `--env-options agent_obsk=0` (see `help(envs.make)`)"""
    total_timesteps: int = 100_000
    """total env steps of the experiment (one step of all agents in one env counts once)"""
    # 8 on batched envs too (envs.batched): with one gradient step per rollout, more envs mean fewer updates
    # per env step; 64 envs x 5 steps learned far worse on smax-3m (docs/throughput.md, "Batched backends")
    num_envs: int = 8
    """the number of parallel environments"""
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
    """one actor shared by all agents (with the one-hot agent id); else one actor per agent"""

    # Algorithm specific arguments
    num_steps: int = 25
    """the number of steps T collected from each env per iteration"""
    use_rnn: bool = True
    """GRU actor over the local history (else an MLP on the current observation and last action)"""
    hidden_dim: int = 64
    """hidden size of the actor (and of its GRU)"""
    critic_hidden_dim: int = 128
    """hidden size of the critic's two hidden layers"""
    learning_rate: float = 5e-4
    """the learning rate of the actor optimizer"""
    critic_learning_rate: float = 5e-4
    """the learning rate of the critic optimizer"""
    gamma: float = 0.99
    """the discount factor gamma"""
    td_lambda: float = 0.8
    """the lambda of the critic's TD(lambda) targets"""
    critic_updates: int = 1
    """critic gradient steps (on the whole batch) per iteration"""
    target_update_interval: int = 20
    """hard-copy the critic into the target critic every this many critic updates"""
    epsilon_start: float = 0.5
    """initial weight of the uniform distribution mixed into the policy"""
    epsilon_finish: float = 0.01
    """final weight of the uniform mix"""
    epsilon_anneal_steps: int = 50_000
    """env steps over which epsilon is annealed linearly"""
    ent_coef: float = 0.0
    """coefficient of the entropy bonus (0: the paper; 0.01: better on smax-3m, fails on 2s3z: docs/smax.md)"""
    critic_last_action: bool = True
    """give the critic all agents' previous actions (as in the paper)"""
    max_grad_norm: float = 10.0
    """the maximum norm for gradient clipping"""

    # to be filled in runtime
    batch_size: int = 0
    """num_envs * num_steps (filled in at runtime)"""
    num_iterations: int = 0
    """total_timesteps // batch_size (filled in at runtime)"""


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):  # noqa: B008
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


# ------------------------------------------------------------------------------------ networks
class AgentNet(nn.Module):
    """fc -> ReLU -> GRUCell (or fc -> ReLU) -> logits. The hidden state passes through an MLP."""

    def __init__(self, in_dim: int, n_actions: int, hidden: int, use_rnn: bool):
        super().__init__()
        self.use_rnn = use_rnn
        self.fc = layer_init(nn.Linear(in_dim, hidden))
        if use_rnn:
            self.rnn = nn.GRUCell(hidden, hidden)
            for name, p in self.rnn.named_parameters():
                nn.init.orthogonal_(p) if "weight" in name else nn.init.constant_(p, 0.0)
        else:
            self.fc2 = layer_init(nn.Linear(hidden, hidden))
        self.out = layer_init(nn.Linear(hidden, n_actions), std=0.01)

    def forward(self, x, h):
        x = F.relu(self.fc(x))
        if self.use_rnn:
            h = self.rnn(x, h)
            return self.out(h), h
        return self.out(F.relu(self.fc2(x))), h


class Actor(nn.Module):
    """pi^i(. | tau^i) for all agents at once: logits [B, N, n_actions] and the next hidden state."""

    def __init__(self, obs_dims, act_dims, share: bool, use_rnn: bool, hidden: int):
        super().__init__()
        self.n_agents, self.obs_dims, self.act_dims = len(obs_dims), list(obs_dims), list(act_dims)
        self.obs_dim, self.n_actions, self.share, self.hidden = max(obs_dims), max(act_dims), share, hidden
        N, A = self.n_agents, self.n_actions
        if share:  # padded obs + padded last action + one-hot id
            self.nets = nn.ModuleList([AgentNet(self.obs_dim + A + N, A, hidden, use_rnn)])
        else:  # one actor per agent on its true sizes
            self.nets = nn.ModuleList(
                [AgentNet(o + a, a, hidden, use_rnn) for o, a in zip(self.obs_dims, self.act_dims)]
            )

    def initial_state(self, batch: int, device) -> torch.Tensor:
        return torch.zeros(batch, self.n_agents, self.hidden, device=device)

    def forward(self, obs, last_action, h):
        B, N, A = obs.shape[0], self.n_agents, self.n_actions
        if self.share:
            ids = torch.eye(N, device=obs.device).expand(B, N, N)
            x = torch.cat([obs, last_action, ids], -1).reshape(B * N, -1)
            logits, h = self.nets[0](x, h.reshape(B * N, -1))
            return logits.view(B, N, A), h.view(B, N, -1)
        logits = torch.full((B, N, A), -1e10, device=obs.device)
        hs = []
        for i, net in enumerate(self.nets):
            o, a = self.obs_dims[i], self.act_dims[i]
            out, hi = net(torch.cat([obs[:, i, :o], last_action[:, i, :a]], -1), h[:, i])
            logits[:, i, :a] = out
            hs.append(hi)
        return logits, torch.stack(hs, 1)


class Critic(nn.Module):
    """Q(s, u^-i, o^i, i, u_{t-1}) -> Q for every action of agent i: [B, N, n_actions]."""

    def __init__(self, in_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            layer_init(nn.Linear(in_dim, hidden)),
            nn.ReLU(),
            layer_init(nn.Linear(hidden, hidden)),
            nn.ReLU(),
            layer_init(nn.Linear(hidden, n_actions), std=1.0),
        )

    def forward(self, x):
        return self.net(x)


# ------------------------------------------------------------------------------ pure functions
def critic_inputs(state, obs, actions_onehot, last_actions_onehot=None):
    """Per-agent critic inputs [B, N, D]: (s, o^i, u^-i one-hot with agent i's block zeroed,
    u_{t-1} of all agents (optional), one-hot id). state [B, S], obs [B, N, O], actions [B, N, A]."""
    B, N, A = actions_onehot.shape
    joint = actions_onehot.reshape(B, 1, N * A).expand(B, N, N * A)
    others_mask = (1 - torch.eye(N, device=obs.device)).repeat_interleave(A, dim=1)  # [N, N*A]
    parts = [state[:, None].expand(B, N, state.shape[-1]), obs, joint * others_mask]
    if last_actions_onehot is not None:
        parts.append(last_actions_onehot.reshape(B, 1, N * A).expand(B, N, N * A))
    parts.append(torch.eye(N, device=obs.device).expand(B, N, N))
    return torch.cat(parts, -1)


def masked_policy(logits, avail, epsilon: float):
    """pi = (1 - eps) softmax(logits masked by avail) + eps / |avail|; exactly 0 on unavailable actions."""
    probs = torch.softmax(logits.masked_fill(~avail, -1e10), -1)
    uniform = avail.float() / avail.sum(-1, keepdim=True).clamp(min=1)
    return ((1 - epsilon) * probs + epsilon * uniform) * avail


def coma_advantage(q_values, pi, actions):
    """A^i = Q(s, u)[u^i] - sum_{u'} pi^i(u') Q(s, (u^-i, u')). q_values, pi [..., A], actions [...] long.
    Returns (advantage, baseline, q_taken), all [...] and detached."""
    q_values, pi = q_values.detach(), pi.detach()
    q_taken = q_values.gather(-1, actions[..., None]).squeeze(-1)
    baseline = (pi * q_values).sum(-1)  # pi is 0 on unavailable actions: they drop out of the sum
    return q_taken - baseline, baseline, q_taken


def td_lambda_targets(rewards, q_next, terminated, done, gamma: float, lam: float):
    """TD(lambda) returns G [T, E, N] of a T-step rollout from E envs.

    rewards [T, E]; q_next [T, E, N]: Q_target(s_{t+1}, u_{t+1}) per agent, where step t+1 is the
    next step of the same episode, or the final state on truncation, or the bootstrap step after
    the rollout; terminated, done (= terminated | truncated) [T, E].
      G_t = r_t + gamma (1 - term_t) [(1 - lam) q_next_t + lam G_{t+1}]   inside an episode,
      G_t = r_t + gamma (1 - term_t) q_next_t                            where step t ends an episode or the rollout.
    """
    T = rewards.shape[0]
    G = torch.zeros_like(q_next)
    not_term = 1.0 - terminated.float()
    for t in reversed(range(T)):
        nxt = q_next[t]
        if t < T - 1:
            cont = (1.0 - done[t].float())[:, None]  # 1 where step t+1 continues this episode
            nxt = nxt + cont * lam * (G[t + 1] - q_next[t])
        G[t] = rewards[t][:, None] + gamma * not_term[t][:, None] * nxt
    return G


def linear_schedule(start: float, finish: float, duration: int, t: int) -> float:
    return start + (finish - start) * min(1.0, t / max(duration, 1))


# ---------------------------------------------------------------------------------- boilerplate
def to_t(x, device, dtype=torch.float32):
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


@torch.no_grad()
def evaluate(
    actor: Actor, env_id: str, n_episodes: int, seed: int, device, video_path: str | None = None, env_options=()
):
    """Greedy episodes (argmax over available actions). Returns (mean return, win rate or nan).
    With a video_path, the first episode of env 0 is recorded as well (the numbers do not change)."""
    options = {**envs.parse_options(env_options), **experiment.render_options(video_path)}
    env = envs.make(env_id, num_envs=min(n_episodes, 8), seed=seed, **options)
    returns, wins = [], []
    try:
        video = experiment.Video(env, video_path)
        batch = env.reset()
        E, N, A = env.num_envs, env.n_agents, env.n_actions
        h = actor.initial_state(E, device)
        last = torch.zeros(E, N, A, device=device)
        while len(returns) < n_episodes:
            video.capture()
            avail = to_t(batch["avail"], device, torch.bool)
            logits, h = actor(to_t(batch["obs"], device), last, h)
            action = logits.masked_fill(~avail, -1e10).argmax(-1)
            batch, _, term, trunc, info = env.step(action.cpu().numpy())
            video.stepped(term, trunc)
            done = term | trunc
            if done.any():
                for e in np.flatnonzero(done):
                    returns.append(float(info["episode"]["return"][e]))
                    if "win" in env.metric_names:
                        wins.append(float(info["episode"]["win"][e]))
                keep = to_t(~done, device)[:, None, None]
                h, last = h * keep, F.one_hot(action, A).float() * keep
            else:
                last = F.one_hot(action, A).float()
        video.save()
    finally:
        env.close()
    win_rate = float(np.mean(wins[:n_episodes])) if wins else float("nan")
    return float(np.mean(returns[:n_episodes])), win_rate


def check_args(args: Args, env) -> None:
    if not env.discrete:
        raise ValueError(
            f"coma.py handles discrete actions only: COMA's counterfactual baseline sums Q over the agent's "
            f"action set, and {args.env_id} has continuous actions. Use an algorithm that handles continuous "
            f"actions: {CONTINUOUS_ALGOS} (e.g. python mappo.py --env-id {args.env_id})"
        )
    if args.capture_video and envs.family(args.env_id) not in ("mamujoco", "mpe"):
        raise ValueError(f"--capture-video is supported for MA-MuJoCo and MPE only, not {args.env_id}")
    if args.num_steps < 1 or args.num_envs < 1:
        raise ValueError("num_steps and num_envs must be positive")


# ---------------------------------------------------------------------------------------- train
def train(args: Args) -> dict:
    resumed = experiment.resume_run(args.resume, "coma", args) if args.resume else None  # the run's own flags
    experiment.check_args(args, args.num_envs * args.num_steps)  # budget, learning rates, --cuda
    device = experiment.device(args.cuda)
    if args.checkpoint:
        ckpt = experiment.load_checkpoint(args.checkpoint, "coma", args.env_id)
        saved = Args(**{k: v for k, v in ckpt["args"].items() if k in {f.name for f in dataclasses.fields(Args)}})
        if args.capture_video and envs.family(args.env_id) not in ("mamujoco", "mpe"):
            raise ValueError(f"--capture-video is supported for MA-MuJoCo and MPE only, not {args.env_id}")
        actor = Actor(ckpt["obs_dims"], ckpt["act_dims"], saved.share_params, saved.use_rnn, saved.hidden_dim)
        actor.load_state_dict(ckpt["model"]["actor"])
        actor.to(device)
        run_dir = os.path.dirname(args.checkpoint)  # a video goes next to the model
        video = experiment.video_path(run_dir, "checkpoint") if args.capture_video else None
        ret, win = evaluate(actor, args.env_id, args.eval_episodes, args.seed + 10_000, device, video, args.env_options)
        experiment.print_summary(run_dir, 0, ret, win, args.eval_episodes, args.checkpoint)
        return {"run_dir": run_dir, "model_path": args.checkpoint, "global_step": 0,
                "episodic_return": float("nan"), "eval_return": ret, "eval_win_rate": win}  # fmt: skip

    progress = resumed["training"] if resumed else {"global_step": 0, "iteration": 0, "next_eval": args.eval_interval}
    global_step, next_eval = progress["global_step"], progress["next_eval"]
    # a resumed run's envs are seeded past the first run's, so that they do not replay its first episodes
    options = envs.parse_options(args.env_options)
    env = envs.make(args.env_id, num_envs=args.num_envs, seed=args.seed + global_step, **options)
    try:
        check_args(args, env)
    except ValueError:
        env.close()
        raise
    args.batch_size = args.num_envs * args.num_steps
    args.num_iterations = max(1, args.total_timesteps // args.batch_size)
    if resumed:  # the run's folder; its logs continue after the saved step
        run_dir = os.path.dirname(args.resume)
    else:
        run_dir = experiment.make_run_dir(args.env_id, args.exp_name, args.seed)  # unique, even in the same second
    writer = experiment.make_writer(args, run_dir, purge_step=global_step + 1 if resumed else 0)  # TensorBoard (+ W&B)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)

    E, N, A, T = args.num_envs, env.n_agents, env.n_actions, args.num_steps
    actor = Actor(env.obs_dims, env.act_dims, args.share_params, args.use_rnn, args.hidden_dim).to(device)
    critic_in = env.state_dim + env.obs_dim + N * A * (2 if args.critic_last_action else 1) + N
    critic = Critic(critic_in, A, args.critic_hidden_dim).to(device)
    target_critic = Critic(critic_in, A, args.critic_hidden_dim).to(device)
    target_critic.load_state_dict(critic.state_dict())
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.learning_rate, eps=1e-5)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_learning_rate, eps=1e-5)
    n_critic_updates = 0  # counts to the hard target updates
    if resumed:  # the saved weights, the target critic and its update count, optimizers and random generators
        actor.load_state_dict(resumed["model"]["actor"])
        critic.load_state_dict(resumed["model"]["critic"])
        target_critic.load_state_dict(progress["target_critic"])
        n_critic_updates = progress["n_critic_updates"]
        actor_opt.load_state_dict(progress["actor_optimizer"])
        critic_opt.load_state_dict(progress["critic_optimizer"])
        experiment.set_rng_state(progress["rng"])

    def save() -> str:  # atomically (a temporary file, then a rename): the model and what --resume needs
        state = dict(global_step=global_step, iteration=iteration, next_eval=next_eval, rng=experiment.rng_state())
        state.update(actor_optimizer=actor_opt.state_dict(), critic_optimizer=critic_opt.state_dict())
        state.update(target_critic=target_critic.state_dict(), n_critic_updates=n_critic_updates)
        model = {"algo": "coma", "env_id": args.env_id, "args": dataclasses.asdict(args),
                 "obs_dims": list(env.obs_dims), "act_dims": list(env.act_dims),
                 "model": {"actor": actor.state_dict(), "critic": critic.state_dict()}}  # fmt: skip
        return experiment.save_checkpoint(os.path.join(run_dir, f"{args.exp_name}.pt"), {**model, "training": state})

    def qin(state, obs, actions, last):
        return critic_inputs(state, obs, F.one_hot(actions, A).float(), last if args.critic_last_action else None)

    # rollout storage [T, E, ...]
    obs_b = torch.zeros(T, E, N, env.obs_dim, device=device)
    state_b = torch.zeros(T, E, env.state_dim, device=device)
    avail_b = torch.zeros(T, E, N, A, dtype=torch.bool, device=device)
    alive_b = torch.zeros(T, E, N, device=device)
    last_b = torch.zeros(T, E, N, A, device=device)  # u_{t-1} one-hot (zero at an episode's first step)
    act_b = torch.zeros(T, E, N, dtype=torch.long, device=device)
    rew_b = torch.zeros(T, E, device=device)
    term_b = torch.zeros(T, E, device=device)
    done_b = torch.zeros(T, E, device=device)
    next_obs_b = torch.zeros_like(obs_b)  # inputs of the bootstrap step t+1 (final obs/state on truncation)
    next_state_b = torch.zeros_like(state_b)
    next_act_b = torch.zeros_like(act_b)

    batch = env.reset()
    # the GRU state and the last actions start at zero, after a resume too: every env starts a new episode
    h = actor.initial_state(E, device)
    last = torch.zeros(E, N, A, device=device)
    recent_returns, recent_wins = deque(maxlen=20), deque(maxlen=20)
    start_step, start_time = global_step, time.time()
    training = experiment.Training(run_dir, args.num_iterations * args.batch_size, start_step)  # progress bar, Ctrl-C

    def sample(obs, last, h, avail, eps):
        logits, h = actor(obs, last, h)
        return torch.multinomial(masked_policy(logits, avail, eps).reshape(-1, A), 1).view(E, N), h

    iteration = progress["iteration"]  # as saved, if a larger --total-timesteps adds no whole iteration to a resume
    for iteration in range(progress["iteration"] + 1, args.num_iterations + 1):
        eps = linear_schedule(args.epsilon_start, args.epsilon_finish, args.epsilon_anneal_steps, global_step)
        h0 = h.clone()
        ended = {k: [] for k in ("return", "length", "win", *env.metric_names)}  # episodes ending now
        # ------------------------------------------------------------------ rollout (T steps)
        with torch.no_grad():
            obs, avail = to_t(batch["obs"], device), to_t(batch["avail"], device, torch.bool)
            for t in range(T):
                obs_b[t], state_b[t], avail_b[t] = obs, to_t(batch["state"], device), avail
                alive_b[t], last_b[t] = to_t(batch["alive"], device), last
                action, h = sample(obs, last, h, avail, eps)
                act_b[t] = action
                if t > 0:  # u_t is the bootstrap action of step t-1 where the episode went on
                    next_act_b[t - 1] = torch.where(done_b[t - 1, :, None].bool(), next_act_b[t - 1], action)
                batch, reward, term, trunc, info = env.step(action.cpu().numpy())
                global_step += E
                rew_b[t], term_b[t] = to_t(reward, device), to_t(term, device)
                done = term | trunc
                done_b[t] = to_t(done, device)
                next_obs_b[t], next_state_b[t] = to_t(info["final_obs"], device), to_t(info["final_state"], device)
                next_act_b[t] = 0
                last = F.one_hot(action, A).float()
                if trunc.any():  # u_final ~ pi(. | final obs, final avail): sampled, never executed
                    u_final, _ = sample(next_obs_b[t], last, h, to_t(info["final_avail"], device, torch.bool), eps)
                    next_act_b[t] = torch.where(to_t(trunc, device, torch.bool)[:, None], u_final, next_act_b[t])
                obs, avail = to_t(batch["obs"], device), to_t(batch["avail"], device, torch.bool)
                if done.any():
                    keep = (1.0 - done_b[t])[:, None, None]
                    h, last = h * keep, last * keep
                    for k, v in ended.items():
                        if k in info["episode"]:
                            v.extend(np.asarray(info["episode"][k])[done].tolist())
            # bootstrap step after the rollout: u_T sampled where the episode goes on (not executed)
            u_T, _ = sample(obs, last, h, avail, eps)
            next_act_b[T - 1] = torch.where(done_b[T - 1, :, None].bool(), next_act_b[T - 1], u_T)

        # ------------------------------------------------------------------ critic: TD(lambda)
        flat = lambda x: x.reshape(T * E, *x.shape[2:])
        with torch.no_grad():
            x_next = qin(flat(next_state_b), flat(next_obs_b), flat(next_act_b), flat(F.one_hot(act_b, A).float()))
            q_next = target_critic(x_next).gather(-1, flat(next_act_b)[..., None]).squeeze(-1).view(T, E, N)
            q_next = q_next * (1.0 - term_b)[..., None]
            targets = td_lambda_targets(rew_b, q_next, term_b, done_b, args.gamma, args.td_lambda)
        x_t = qin(flat(state_b), flat(obs_b), flat(act_b), flat(last_b))
        for _ in range(args.critic_updates):
            q_taken = critic(x_t).gather(-1, flat(act_b)[..., None]).squeeze(-1).view(T, E, N)
            critic_loss = ((q_taken - targets) ** 2).mean()
            critic_opt.zero_grad()
            critic_loss.backward()
            nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
            critic_opt.step()
            n_critic_updates += 1
            if n_critic_updates % args.target_update_interval == 0:  # hard target update
                target_critic.load_state_dict(critic.state_dict())

        # ------------------------------------------------------------------ actor: counterfactual PG
        hh, pis, ents = h0, [], []
        for t in range(T):
            if t > 0:
                hh = hh * (1.0 - done_b[t - 1])[:, None, None]
            logits, hh = actor(obs_b[t], last_b[t], hh)
            pis.append(masked_policy(logits, avail_b[t], eps))
            p0 = masked_policy(logits, avail_b[t], 0.0)
            ents.append(-(p0 * torch.log(p0.clamp(min=1e-10))).sum(-1))
        pi, entropy = torch.stack(pis), torch.stack(ents)  # [T, E, N, A], [T, E, N]
        with torch.no_grad():
            q_values = critic(x_t).view(T, E, N, A)
        advantage, baseline, q_taken = coma_advantage(q_values, pi, act_b)
        log_pi = torch.log(pi.gather(-1, act_b[..., None]).squeeze(-1).clamp(min=1e-10))
        mask = alive_b
        pg_loss = -(advantage * log_pi * mask).sum() / mask.sum().clamp(min=1)
        entropy_loss = (entropy * mask).sum() / mask.sum().clamp(min=1)
        actor_loss = pg_loss - args.ent_coef * entropy_loss
        actor_opt.zero_grad()
        actor_loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(actor.parameters(), args.max_grad_norm)
        actor_opt.step()

        # ------------------------------------------------------------------ logging / evaluation
        # one point per iteration: the mean of the episodes that ended in it (cheap on one-step games)
        recent_returns.extend(ended["return"])
        recent_wins.extend(ended["win"])
        if ended["return"]:
            writer.add_scalar("charts/episodic_return", np.mean(ended["return"]), global_step)
            writer.add_scalar("charts/episodic_length", np.mean(ended["length"]), global_step)
        if ended["win"]:
            writer.add_scalar("charts/win_rate", np.mean(ended["win"]), global_step)
        for name in set(env.metric_names) - {"win"}:  # the task's own metrics (traffic waiting time)
            if ended[name]:
                writer.add_scalar(f"charts/{name}", np.mean(ended[name]), global_step)
        sps = int((global_step - start_step) / (time.time() - start_time))
        writer.add_scalar("charts/SPS", sps, global_step)
        writer.add_scalar("charts/learning_rate", actor_opt.param_groups[0]["lr"], global_step)
        writer.add_scalar("charts/epsilon", eps, global_step)
        writer.add_scalar("losses/critic_loss", critic_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/q_taken_mean", q_taken.mean().item(), global_step)
        writer.add_scalar("losses/target_mean", targets.mean().item(), global_step)
        writer.add_scalar("losses/advantage_abs", advantage.abs().mean().item(), global_step)
        writer.add_scalar("losses/actor_grad_norm", float(grad_norm), global_step)
        training.update(global_step, recent_returns, recent_wins)
        if training.interrupted:
            break
        if args.eval_interval > 0 and global_step >= next_eval and iteration < args.num_iterations:
            next_eval += args.eval_interval
            video = experiment.video_path(run_dir, global_step) if args.capture_video else None
            eval_return, eval_win = evaluate(
                actor, args.env_id, args.eval_episodes, args.seed + 10_000, device, video, args.env_options
            )
            experiment.log_eval(writer, global_step, eval_return, eval_win, args.eval_episodes)
            if args.save_model:  # a crash or a kill loses at most the steps since this save (--resume)
                save()
    env.close()
    training.close()

    # ---------------------------------------------------------------------- save, final evaluation, summary
    model_path = None
    if args.save_model:  # before the evaluation, so that an interrupted run keeps its model too
        model_path = save()
    eval_return, eval_win = float("nan"), float("nan")
    if not training.interrupted:
        video = experiment.video_path(run_dir, global_step) if args.capture_video else None
        eval_return, eval_win = evaluate(
            actor, args.env_id, args.eval_episodes, args.seed + 10_000, device, video, args.env_options
        )
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
