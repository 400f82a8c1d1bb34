"""Google Research Football academy scenarios through `gfootball` (the MAT paper's football tasks).

- `grf-academy_3_vs_1_with_keeper`: 3 attackers against a defender and a keeper (3 agents).
- `grf-academy_pass_and_shoot_with_keeper`: 2 attackers, a defender and a keeper (2 agents).
- `grf-academy_counterattack_easy`: a 4-player counter-attack against one defender (4 agents; the
  other players of the left team are run by the game's built-in AI).

Set up as the MAPPO code base (marlbenchmark/on-policy, `envs/football/Football_Env.py` and its
football scripts) and MAT use it: `representation="simple115v2"` (115 floats per agent: ball
position, direction and owner, the active player, every player's position and motion, the game mode),
`rewards="scoring,checkpoints"` (+1 for a goal; and, per agent, +0.1 for each of 10 distances to the
goal that its player first reaches with the ball, the rest of the ten paid on a goal), one agent per
controlled left player, 19 actions (all always
available). The team reward is the sum over the agents (on-policy's `share_reward`); per-agent rewards
are in info["agent_rewards"]. The state is the concatenation of the agents' observations.

An episode terminates on a goal, the ball going out of play or the other team winning the ball (the
academy scenarios' end conditions), and is truncated after 400 steps (their `game_duration`).
info["episode"]["win"] is 1 where the left team scored. Env e of a batch is seeded with seed + e:
each episode's game-engine seed is drawn from that env's seeded generator. The engine itself is not
reproducible: the same seed gives the same engine seeds, not always the same trajectories.

gfootball is not installed by `pip install -r requirements.txt`: it builds a C++ engine from source.
`INSTALL` below (and the error raised without it) says how; docs/lbf-rware.md records a build.
"""

from __future__ import annotations

import functools
import importlib

import gymnasium as gym
import numpy as np

from envs import GRF_IDS
from envs.core import AgentTupleParallelEnv, GymVectorMultiAgentEnv, MissingDependencyError, ParallelEnvAdapter

AGENTS = dict(zip(GRF_IDS, (3, 2, 4)))  # agents (controlled left players) of each scenario
EPISODE_LIMIT = 400  # the academy scenarios' game_duration
OBS_DIM, N_ACTIONS = 115, 19
INSTALL = (
    "apt-get install git cmake build-essential pkg-config libgl1-mesa-dev libsdl2-dev libsdl2-image-dev "
    "libsdl2-ttf-dev libsdl2-gfx-dev libboost-python-dev libboost-system-dev libboost-filesystem-dev "
    "libboost-thread-dev libdirectfb-dev mesa-utils xvfb  &&  pip install psutil wheel setuptools six gym==0.25.2  "
    "&&  pip install --no-build-isolation gfootball==2.10.2   (it compiles a C++ engine: ~5 minutes on 2 idle cores)"
)


def require_gfootball(env_id: str):
    try:
        return importlib.import_module("gfootball.env")
    except ImportError as e:
        raise MissingDependencyError(
            f"env '{env_id}' needs Google Research Football (the python package 'gfootball' and its C++ engine), "
            f"which is not installed ({e}). It is not in requirements.txt because it builds from source; "
            f"install it with:  {INSTALL}"
        ) from e


class FootballEnv(gym.Env):
    """One gfootball env (old gym API, stacked arrays) as a gymnasium env with one space per agent."""

    def __init__(self, env_id: str, rewards: str):
        football = require_gfootball(env_id)
        self.n_agents = AGENTS[env_id]
        self.env = football.create_environment(
            env_name=env_id.removeprefix("grf-"),
            representation="simple115v2",
            rewards=rewards,
            number_of_left_players_agent_controls=self.n_agents,
            render=False,
        )
        box = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.observation_space = gym.spaces.Tuple([box] * self.n_agents)
        self.action_space = gym.spaces.Tuple([gym.spaces.Discrete(N_ACTIONS)] * self.n_agents)
        self.done, self.time_up, self.scored = False, False, False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # gfootball reads the engine seed of the next episode from its config
        self.env.unwrapped._config.update({"game_engine_random_seed": int(self.np_random.integers(2**31 - 1))})
        obs = self.env.reset()
        self.done, self.time_up, self.scored = False, False, False
        return tuple(np.asarray(obs, np.float32)), {}

    def step(self, actions):
        obs, rewards, done, info = self.env.step(np.asarray(actions))
        self.done = bool(done)
        # the game clock (it may run ahead of the env steps) says whether the game's time is up
        self.time_up = self.env.unwrapped.observation()[0]["steps_left"] <= 0
        self.scored = self.scored or info["score_reward"] > 0
        return tuple(np.asarray(obs, np.float32)), list(np.asarray(rewards).reshape(-1)), done, False, info

    def close(self):
        self.env.close()


def ended_before_time_up(env: FootballEnv) -> bool:
    return env.done and not env.time_up


def _make_adapter(env_id: str, rewards: str) -> ParallelEnvAdapter:
    return ParallelEnvAdapter(
        lambda: AgentTupleParallelEnv(FootballEnv(env_id, rewards), EPISODE_LIMIT, ended_before_time_up),
        "sum",
        episode_metrics_fn=lambda parallel_env: {"win": float(parallel_env.env.scored)},
    )


def make(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    rewards: str = "scoring,checkpoints",
    vectorization: str = "sync",
) -> GymVectorMultiAgentEnv:
    """`rewards`: gfootball's reward list ("scoring" for goals only)."""
    if env_id not in AGENTS:
        raise ValueError(f"unknown football scenario {env_id!r}. Valid ids: {', '.join(AGENTS)}")
    require_gfootball(env_id)  # fail here, with the install steps, before any env is built
    fns = [functools.partial(_make_adapter, env_id, rewards) for _ in range(num_envs)]
    return GymVectorMultiAgentEnv(env_id, fns, vectorization, seed, episode_limit=EPISODE_LIMIT, metric_names=("win",))
