"""Environment adapters behind one contract (see `envs.core.MultiAgentVecEnv` and DESIGN.md).

    import envs
    env = envs.make("ant-2x4", num_envs=8, seed=0)
    batch = env.reset()                       # obs [E, N, obs_dim], state [E, state_dim], ...
    batch, reward, terminated, truncated, info = env.step(actions)
    envs.ids()                                # every valid id

Each family lives in its own module, imported only when one of its ids is made, so a missing
backend package only matters for the family that needs it.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Sequence
from typing import Any

from envs.core import MissingDependencyError, MultiAgentVecEnv, random_actions

__all__ = [
    "make", "ids", "family", "batched", "BACKENDS", "parse_options", "random_actions",
    "MultiAgentVecEnv", "MissingDependencyError",
]  # fmt: skip

TOY_IDS = ["matrix-climbing", "matrix-penalty", "product-game", "memory-cue"]
TSC_IDS = ["tsc-2x2", "tsc-4x4", "tsc-cologne8"]
MAMUJOCO_IDS = [
    "ant-2x4", "ant-4x2", "ant-8x1",
    "halfcheetah-2x3", "halfcheetah-3x2", "halfcheetah-6x1",
    "walker-2x3", "walker-3x2", "walker-6x1",
    "hopper-3x1", "humanoid-9-8",
]  # fmt: skip
SMAX_MAPS = [
    "3m", "2s3z", "25m", "3s5z", "8m", "5m_vs_6m", "10m_vs_11m", "27m_vs_30m",
    "3s5z_vs_3s6z", "3s_vs_5z", "6h_vs_8z", "smacv2_5_units", "smacv2_10_units", "smacv2_20_units",
]  # fmt: skip
SMAX_IDS = [f"smax-{m}" for m in SMAX_MAPS]
MPE_IDS = [f"mpe-{s}{c}" for s in ("spread", "speaker-listener", "reference") for c in ("", "-continuous")]
LBF_IDS = [f"lbf-{t}" for t in ("8x8-2p-2f-coop", "2s-8x8-2p-2f-coop", "8x8-2p-3f", "10x10-3p-3f", "2s-10x10-3p-3f",
                                  "15x15-3p-5f", "15x15-4p-3f", "15x15-4p-5f")]  # fmt: skip
RWARE_IDS = [f"rware-{t}" for t in ("tiny-2ag", "tiny-4ag", "small-2ag", "small-4ag")]
GRF_IDS = [f"grf-academy_{s}" for s in ("3_vs_1_with_keeper", "pass_and_shoot_with_keeper", "counterattack_easy")]

# family -> (module, its ids)
FAMILIES = {
    "toy": ("envs.toy", TOY_IDS),
    "tsc": ("envs.tsc", TSC_IDS),
    "mamujoco": ("envs.mamujoco", MAMUJOCO_IDS),
    "smax": ("envs.smax", SMAX_IDS),
    "mpe": ("envs.mpe", MPE_IDS),
    "lbf": ("envs.lbf", LBF_IDS),
    "rware": ("envs.rware", RWARE_IDS),
    "grf": ("envs.grf", GRF_IDS),
}
# family -> its backend whose `make` steps the whole batch in one jitted call, so that 128 envs cost
# little more than 8: the algorithm files default to many envs there (see `batched`). Not rware's jax
# backend: IPPO does not learn RWARE with the many-env rollout (docs/backend-rware-jax.md, "Not with many envs")
BATCHED_BACKENDS = {"smax": "jax", "mpe": "jax", "lbf": "jax"}

# family -> its simulator backends, the default first; where there are several, the option
# `backend=...` of envs.make (`--env-options backend=...` in the algorithm files) picks one
BACKENDS = {
    "toy": ("numpy",),
    "tsc": ("sumo-rl",),
    "mamujoco": ("mujoco", "gymnasium-robotics"),  # envs/mamujoco.py, docs/backend-mamujoco-fast.md
    "smax": ("jax",),
    "smac": ("smac",),
    "mpe": ("jax", "mpe2"),  # envs/mpe.py, docs/backend-mpe-jax.md
    "lbf": ("lbforaging", "jax"),  # envs/lbf.py, docs/backend-lbf-jax.md
    "rware": ("rware", "jax"),  # envs/rware.py, docs/backend-rware-jax.md
    "grf": ("gfootball",),
}


def ids() -> list[str]:
    """Every env id that `make` accepts (real SMAC `smac-<map>` ids need StarCraft II, see docs/troubleshooting.md)."""
    return [i for _, family_ids in FAMILIES.values() for i in family_ids]


def family(env_id: str) -> str:
    """The family an id belongs to: toy, tsc, mamujoco, smax, smac, mpe, lbf, rware or grf."""
    if env_id.startswith("smac-"):
        return "smac"
    for name, (_, family_ids) in FAMILIES.items():
        if env_id in family_ids:
            return name
    raise ValueError(
        f"unknown env id {env_id!r}. Valid ids: {', '.join(ids())}"
        " (and smac-<map> where StarCraft II and smac are installed)"
    )


def batched(env_id: str, options: dict[str, Any] | None = None) -> bool:
    """True where one jitted call steps the whole batch of `env_id` made with these `options` (SMAX; the
    particle worlds on their default jax backend, not with `backend="mpe2"`; LBF with `backend="jax"`), so
    that the algorithm files default to many envs there (their `ROLLOUT_DEFAULTS["batched"]`, applied by
    `envs.experiment.resolve_rollout`). A family opts in with its jitted backend in `BATCHED_BACKENDS`."""
    name = family(env_id)
    backend = (options or {}).get("backend", BACKENDS[name][0])
    return BATCHED_BACKENDS.get(name) == backend


def make(env_id: str, num_envs: int = 1, seed: int | None = None, **options) -> MultiAgentVecEnv:
    """A batch of `num_envs` auto-resetting copies of task `env_id` (see `ids()`).

    `seed`: env e of the batch is seeded with seed + e at the first reset. `options` are
    passed to the family's module (e.g. `agent_obsk` for Multi-Agent MuJoCo, `penalty` for
    matrix-penalty, `vectorization="async"` for one worker process per env, `backend` where
    `BACKENDS` lists several for the family).
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
    name = family(env_id)
    if "backend" in options and len(BACKENDS[name]) == 1:
        if options["backend"] != BACKENDS[name][0]:
            choices = ", ".join(f"{f} ({', '.join(b)})" for f, b in BACKENDS.items() if len(b) > 1)
            raise ValueError(
                f"{env_id} has one backend ({BACKENDS[name][0]}), got backend={options['backend']!r}; "
                f"the families with a choice of backend are: {choices}"
            )
        options.pop("backend")  # naming the only backend is allowed
    if name == "smac":
        module = importlib.import_module("envs.smac")
    elif name == "toy":
        from envs.toy import MemoryCueEnv, ToyGameEnv

        cls = MemoryCueEnv if env_id == "memory-cue" else ToyGameEnv
        try:
            return cls(env_id, num_envs, seed, **options)
        except TypeError as e:
            raise ValueError(f"{env_id}: unknown option ({e}); see help(envs.toy)") from e
    else:
        module = importlib.import_module(FAMILIES[name][0])
    try:
        return module.make(env_id, num_envs=num_envs, seed=seed, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise ValueError(f"{env_id}: unknown option ({e}); see help(envs.{module.__name__})") from e
        raise


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """The algorithm files' `--env-options KEY=VALUE ...` as keyword arguments of `make`.

    Values are read as Python literals where they parse (`agent_obsk=0` -> 0, `flag=True` -> True),
    else kept as strings (`backend=mpe2` -> "mpe2").
    """
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"env option {pair!r} is not KEY=VALUE; write e.g. --env-options agent_obsk=0")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options
