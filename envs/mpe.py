"""Multi-agent particle worlds through `mpe2` (PettingZoo parallel API).

- `mpe-spread`: 3 agents cover 3 landmarks and avoid collisions (simple_spread_v3).
- `mpe-speaker-listener`: a mute listener is guided to a landmark by a speaker that sees the
  target colour (simple_speaker_listener_v4; heterogeneous: obs 3 and 11, actions 3 and 5).
- `mpe-reference`: 2 agents each guide the other to a landmark (simple_reference_v3).

Episodes last 25 steps (truncated, never terminated). The team reward is the mean of the
agents' rewards (identical rewards in speaker-listener; in spread each agent's reward mixes
the global coverage term with its own collisions, `local_ratio` 0.5). The `-continuous`
variants use mpe2's continuous actions: one value in [0, 1] per movement direction (and per
communication symbol).
"""

from __future__ import annotations

import functools

from envs.core import GymVectorMultiAgentEnv, ParallelEnvAdapter, require

SCENARIOS = {
    "mpe-spread": "simple_spread_v3",
    "mpe-speaker-listener": "simple_speaker_listener_v4",
    "mpe-reference": "simple_reference_v3",
}
TASKS = [*SCENARIOS, *(f"{k}-continuous" for k in SCENARIOS)]
EPISODE_LIMIT = 25


def _make_parallel_env(env_id: str, max_cycles: int, render_mode: str | None):
    continuous = env_id.endswith("-continuous")
    module = require(f"mpe2.{SCENARIOS[env_id.removesuffix('-continuous')]}", "mpe2", env_id)
    return module.parallel_env(max_cycles=max_cycles, continuous_actions=continuous, render_mode=render_mode)


def _make_adapter(env_id: str, max_cycles: int, render_mode: str | None) -> ParallelEnvAdapter:
    return ParallelEnvAdapter(functools.partial(_make_parallel_env, env_id, max_cycles, render_mode), "mean")


def make(
    env_id: str,
    num_envs: int = 1,
    seed: int | None = None,
    max_cycles: int = EPISODE_LIMIT,
    vectorization: str = "sync",
    render_mode: str | None = None,
) -> GymVectorMultiAgentEnv:
    """`max_cycles`: episode length; `render_mode="rgb_array"` for video."""
    fns = [functools.partial(_make_adapter, env_id, max_cycles, render_mode) for _ in range(num_envs)]
    return GymVectorMultiAgentEnv(env_id, fns, vectorization, seed, episode_limit=max_cycles)
