"""Traffic signal control: SUMO through `sumo-rl`, one agent per traffic light.

- `tsc-2x2`: sumo-rl's 2x2grid, 4 identical lights (obs 21, 4 green phases), random flows
  (0.1 vehicles/s on each of 4 routes), so the seed changes the traffic.
- `tsc-4x4`: RESCO's grid4x4 (shipped with sumo-rl), 16 identical lights (obs 33, 8 phases).
- `tsc-cologne8`: RESCO's cologne8, 8 real intersections of Cologne, 7:00-8:00 (simulated time
  25200-28800 s); heterogeneous: obs sizes 7..17 and 2..4 green phases per light, so
  observations are zero padded and the padded actions are unavailable (batch["avail"]).

An agent's action is the green phase to show next (sumo-rl inserts the yellow phase and keeps
a minimum green time of 5 s). Observation (sumo-rl's default): one-hot current green phase,
a min-green-elapsed flag, then density and queue of each incoming lane. An agent's reward is
sumo-rl's "diff-waiting-time" (decrease of the accumulated waiting time of the vehicles on its
incoming lanes, in units of 100 s); the team reward is their sum, the per-light rewards are in
info["agent_rewards"]. The global state is the concatenation of all lights' observations.
The rewards telescope: the measure starts at 0, so an episode's return is minus the accumulated
waiting time of the vehicles standing on the incoming lanes at its last step, / 100. SUMO counts
a vehicle's waiting over the last 1000 s only (sumo-rl's waiting_time_memory; no teleporting), so
a vehicle stranded for the whole episode costs at most 10. The return thus scores the queue left
at the end; info["episode"]["waiting_time"] (below) measures the whole episode.

Episodes are truncated (never terminated) after `num_seconds` simulated seconds, i.e.
num_seconds / delta_time steps (720 at the defaults). info["episode"] holds, averaged over the
episode's steps, the network's "waiting_time" (mean over the vehicles in the network of how
long each has been standing, SUMO's waiting time, in s), "mean_speed" (m/s) and "stopped"
(number of halted vehicles).

Default episodes, 2 seeds (return / waiting_time), uniformly random phases vs SUMO's fixed-time
programme (`fixed_ts=True`), from `python benchmark/fixed_time.py --env-ids tsc-2x2 tsc-4x4
tsc-cologne8 --episodes 2`:
    tsc-2x2       -106.0 / 23.0 s   vs   -4.5 / 8.5 s
    tsc-4x4         -4.5 / 11.6 s   vs   -2.1 / 6.5 s
    tsc-cologne8    -7.8 / 10.7 s   vs   -3.9 / 4.7 s

Options of make: `num_seconds` (episode length in simulated seconds, default 3600 as in RESCO;
sumo-rl's own default of 20000 s is too long for RL episodes), `delta_time` (simulated seconds
between actions, default 5), `fixed_ts` (True: the lights run SUMO's fixed-time programme from
the net file and the actions are ignored; the baseline to compare a learned controller with; the
observation's phase one-hot is then meaningless), `vectorization` (only "async").

Implementation notes. SUMO runs through `libsumo` (20-35x faster than TraCI sockets), which runs
exactly one simulation per process: every env of a batch therefore lives in its own worker
process (gymnasium's AsyncVectorEnv, spawn), and this process never starts a simulation, so any
number of batches may coexist. Workers set SUMO_HOME (from the `eclipse-sumo` wheel, unless the
user set it) and LIBSUMO_AS_TRACI before importing sumo-rl. Env e of a batch is seeded with
seed + e (SUMO's --seed); later episodes draw their SUMO seed from that env's seeded generator,
so the same seed gives the same trajectories and episodes differ from each other.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import math
import os
import sys
import types
from typing import Any

import gymnasium as gym
import numpy as np

from envs.core import GymVectorMultiAgentEnv, ParallelEnvAdapter, require

# env id -> (net file, route file relative to sumo_rl/nets, begin time in s)
TASKS = {
    "tsc-2x2": ("2x2grid/2x2.net.xml", "2x2grid/2x2.rou.xml", 0),
    "tsc-4x4": ("RESCO/grid4x4/grid4x4.net.xml", "RESCO/grid4x4/grid4x4_1.rou.xml", 0),
    "tsc-cologne8": ("RESCO/cologne8/cologne8.net.xml", "RESCO/cologne8/cologne8.rou.xml", 25200),
}
NUM_SECONDS = 3600
YELLOW_TIME = 2
# info["episode"] name -> key of sumo-rl's per-step system info
METRICS = {
    "waiting_time": "system_mean_waiting_time",
    "mean_speed": "system_mean_speed",
    "stopped": "system_total_stopped",
}
# per-light observation sizes and numbers of green phases (sumo-rl's default observation); only
# for the stand-in that gymnasium's AsyncVectorEnv builds in this process to read the spaces (the
# workers' real spaces are checked against it)
SIZES = {
    "tsc-2x2": ([21] * 4, [4] * 4),
    "tsc-4x4": ([33] * 16, [8] * 16),
    "tsc-cologne8": ([17, 11, 10, 17, 12, 7, 12, 13], [4, 2, 3, 4, 3, 2, 3, 4]),
}
_building_in_main = False  # True while make() builds the vector env in the user's process
# python module -> pip package
PACKAGES = {"sumo_rl": "sumo-rl", "libsumo": "libsumo", "sumo": "eclipse-sumo"}


def _check_installed(env_id: str) -> None:
    """Raise MissingDependencyError (with the pip command) without importing anything here."""
    for module, pip_name in PACKAGES.items():
        if module == "sumo" and "SUMO_HOME" in os.environ:
            continue  # the user's own SUMO installation
        if importlib.util.find_spec(module) is None:
            require(module, pip_name, env_id)


# ------------------------------------------------------------- inside a worker process
def _import_sumo_rl():
    """Import sumo-rl in a worker: SUMO_HOME, libsumo, lazy pandas, quiet, pettingzoo >= 1.25 shim."""
    if "SUMO_HOME" not in os.environ:
        import sumo

        os.environ["SUMO_HOME"] = sumo.SUMO_HOME
    os.environ["LIBSUMO_AS_TRACI"] = "1"
    import pettingzoo.utils

    # sumo-rl 1.4.5 calls pettingzoo.utils.agent_selector(...), renamed AgentSelector in 1.25
    if not callable(getattr(pettingzoo.utils, "agent_selector", None)):
        pettingzoo.utils.agent_selector = pettingzoo.utils.AgentSelector
    if "pandas" not in sys.modules:
        # sumo-rl imports pandas only to write CSV files, which never happens here: a stand-in that
        # imports the real pandas on first use saves ~1 s per worker start
        sys.modules["pandas"] = _LazyPandas("pandas")
    with contextlib.redirect_stdout(io.StringIO()):  # traci prints "Using libsumo as traci ..."
        import sumo_rl.environment.env as sumo_env_module
    return sumo_env_module


class _LazyPandas(types.ModuleType):
    def __getattr__(self, name: str):
        if sys.modules.get("pandas") is self:
            del sys.modules["pandas"]
        return getattr(importlib.import_module("pandas"), name)


class SumoParallelEnv:
    """sumo-rl's multi-agent `SumoEnvironment` with the PettingZoo parallel API.

    (sumo-rl's own parallel env goes through an AEC wrapper that removes the agents at
    truncation, which would read as termination, and costs a Python loop per agent.)
    """

    def __init__(self, **kwargs):
        module = _import_sumo_rl()
        self.sumo_env = module.SumoEnvironment(**kwargs)
        self.possible_agents = list(self.sumo_env.ts_ids)
        self.agents = list(self.possible_agents)
        signals = self.sumo_env.traffic_signals
        self._obs_spaces = {a: signals[a].observation_space for a in self.agents}
        self._act_spaces = {a: signals[a].action_space for a in self.agents}
        self.last_info: dict[str, Any] = {}

    def observation_space(self, agent):
        return self._obs_spaces[agent]

    def action_space(self, agent):
        return self._act_spaces[agent]

    def _all_obs(self) -> dict:
        # every light acts every delta_time seconds; the last observation of each, to be safe
        return {a: self.sumo_env.observations[a] for a in self.agents}

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.sumo_env.reset(seed=seed)
        self.last_info = {}
        return self._all_obs(), {}

    def step(self, actions: dict):
        _, rewards, dones, info = self.sumo_env.step(actions)
        self.last_info = info
        done = bool(dones["__all__"])
        rewards = {a: float(rewards.get(a, 0.0)) for a in self.agents}
        terms = {a: False for a in self.agents}  # traffic never terminates
        truncs = {a: done for a in self.agents}
        return self._all_obs(), rewards, terms, truncs, {}

    def render(self):
        return None

    def close(self):
        self.sumo_env.close()


class TscAdapter(ParallelEnvAdapter):
    """ParallelEnvAdapter that gives SUMO a new, reproducible seed every episode."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:  # auto-reset: draw the next episode's SUMO seed from this env's generator
            seed = int(self.np_random.integers(2**31 - 1))
        return super().reset(seed=seed, options=options)


def _system_metrics(env: SumoParallelEnv) -> dict[str, float]:
    return {name: float(env.last_info.get(key, 0.0)) for name, key in METRICS.items()}


def _make_parallel_env(env_id: str, num_seconds: int, delta_time: int, fixed_ts: bool) -> SumoParallelEnv:
    module = _import_sumo_rl()
    nets = os.path.join(os.path.dirname(module.__file__), "..", "nets")
    net, route, begin = TASKS[env_id]
    return SumoParallelEnv(
        net_file=os.path.normpath(os.path.join(nets, net)),
        route_file=os.path.normpath(os.path.join(nets, route)),
        begin_time=begin,
        num_seconds=num_seconds,
        delta_time=delta_time,
        yellow_time=YELLOW_TIME,
        fixed_ts=fixed_ts,
        add_system_info=True,
        add_per_agent_info=False,  # not used; it would recompute every light's waiting times
        sumo_seed=0,
        sumo_warnings=False,
        additional_sumo_cmd="--no-step-log",
    )


class _SpacesOnlyParallelEnv:
    """No simulation: just the spaces, for AsyncVectorEnv's throw-away env in the main process."""

    def __init__(self, env_id: str):
        obs_dims, act_dims = SIZES[env_id]
        self.possible_agents = [str(i) for i in range(len(obs_dims))]
        self._obs = {a: gym.spaces.Box(0.0, 1.0, (d,), np.float32) for a, d in zip(self.possible_agents, obs_dims)}
        self._act = {a: gym.spaces.Discrete(n) for a, n in zip(self.possible_agents, act_dims)}

    def observation_space(self, agent):
        return self._obs[agent]

    def action_space(self, agent):
        return self._act[agent]

    def reset(self, seed: int | None = None, options: dict | None = None):
        return {}, {}

    def close(self):
        pass


def _make_adapter(env_id: str, num_seconds: int, delta_time: int, fixed_ts: bool) -> ParallelEnvAdapter:
    if _building_in_main:
        # gymnasium's AsyncVectorEnv makes one env in the calling process to read the spaces: never a
        # libsumo simulation here (one per process, and this process may hold several batches)
        return ParallelEnvAdapter(functools.partial(_SpacesOnlyParallelEnv, env_id))
    return TscAdapter(
        functools.partial(_make_parallel_env, env_id, num_seconds, delta_time, fixed_ts),
        team_reward="sum",
        step_metrics_fn=_system_metrics,
    )


# ------------------------------------------------------------------------ main process
def make(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    num_seconds: int | None = None,
    delta_time: int = 5,
    fixed_ts: bool = False,
    vectorization: str = "async",
) -> GymVectorMultiAgentEnv:
    """`num_seconds`: episode length in simulated seconds (default 3600, 720 steps);
    `delta_time`: simulated seconds between actions (default 5, more than the 2 s yellow);
    `fixed_ts`: run SUMO's fixed-time programme and ignore the actions (baseline);
    `vectorization`: "async" only (one SUMO worker process per env)."""
    if num_seconds is None:
        num_seconds = NUM_SECONDS  # read here, so that tests may shorten every episode by patching it
    if env_id not in TASKS:
        raise ValueError(f"unknown traffic env id {env_id!r}; valid: {', '.join(TASKS)}")
    if vectorization != "async":
        raise ValueError(
            f"{env_id}: vectorization must be 'async' (got {vectorization!r}): libsumo runs one simulation "
            "per process, so every traffic env runs in its own worker process"
        )
    if not isinstance(delta_time, int) or delta_time <= YELLOW_TIME:
        raise ValueError(f"{env_id}: delta_time must be an int > the yellow time {YELLOW_TIME} s, got {delta_time!r}")
    if not isinstance(num_seconds, int) or num_seconds < delta_time:
        raise ValueError(f"{env_id}: num_seconds must be an int >= delta_time ({delta_time}), got {num_seconds!r}")
    _check_installed(env_id)
    fns = [
        functools.partial(_make_adapter, env_id, num_seconds, delta_time, bool(fixed_ts)) for _ in range(num_envs)
    ]
    try:
        with _building_vector_env():
            return GymVectorMultiAgentEnv(
                env_id,
                fns,
                vectorization,
                seed,
                episode_limit=math.ceil(num_seconds / delta_time),
                metric_names=tuple(METRICS),
            )
    except RuntimeError as e:
        if "space" not in str(e):
            raise
        raise RuntimeError(
            f"{env_id}: the simulated traffic lights' sizes differ from envs.tsc.SIZES (another sumo-rl "
            f"version?); update SIZES. ({e})"
        ) from e


@contextlib.contextmanager
def _building_vector_env():
    """Build the vector env without any simulation in this process (see `_make_adapter`), and start
    the spawned workers without re-running the user's main script in each of them.

    multiprocessing's spawn re-imports `__main__` in every child: a script without an
    `if __name__ == "__main__":` guard would start itself recursively, and a guarded one still
    costs each worker its imports (torch, ...). The workers need only this module, so the main
    module's file and spec are hidden while the processes start.
    """
    global _building_in_main
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        _building_in_main = True
        for k in saved:
            if k == "__file__":
                del main.__file__
            else:
                main.__spec__ = None
        yield
    finally:
        _building_in_main = False
        for k, v in saved.items():
            setattr(main, k, v)
