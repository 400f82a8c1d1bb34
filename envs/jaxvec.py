"""The contract on top of a jax environment batched with `jax.vmap` and `jax.jit` on the CPU
(SMAX in `envs.smax`, the particle worlds' jax backend in `envs.mpe`, LBF's in `envs.lbf`).

A family supplies a compiled object (`c`, a `Compiled`) with:
    c.jax, c.cpu                    the jax module and the CPU device
    c.reset(key, num_envs)          -> (env states, batch)
    c.step(key, states, actions)    -> (key, env states, batch, out), the whole batch in one jitted
                                       call, with same-step auto-reset inside it
    batch = (obs [E, N, obs_dim], state [E, S], avail [E, N, A], alive [E, N])
    out   = (reward [E], agent_rewards [E, N], terminated [E], truncated [E],
             metrics [E] per name of metric_names, *final batch)
    c.idle_actions(num_envs)        valid actions to compile the step with (`Compiled.warm_up`)
`JaxVecEnv` keeps the key and the env states, moves the arrays to numpy once per step (one
`device_get` for everything) and keeps the episode bookkeeping.

Compiled functions are cached per task in the process by the families, and jax's persistent
compilation cache (`~/.cache/marl-envs/jax`, or $MARL_JAX_CACHE_DIR; empty string disables it)
makes later processes start faster. jax runs on the CPU (JAX_PLATFORMS=cpu is set unless the
user has set it) and does not preallocate memory.
"""

from __future__ import annotations

import functools
import io
import os
import sys
from typing import Any

import numpy as np

from envs.core import MultiAgentVecEnv, require

JAX_PIP = "jax jaxmarl"


def import_jax(env_id: str, module: str, pip_name: str = "jaxmarl"):
    """Import jax (on the CPU, without preallocation) and a jax simulator's module (JaxMARL's, or
    `pip_name`'s), quietly."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    jax = require("jax", JAX_PIP, env_id)
    cache_dir = os.environ.get("MARL_JAX_CACHE_DIR", os.path.expanduser("~/.cache/marl-envs/jax"))
    if cache_dir and not jax.config.jax_compilation_cache_dir:
        try:
            jax.config.update("jax_compilation_cache_dir", cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        except Exception:  # an old jax without the persistent cache: compile every time
            pass
    # jaxmarl prints on import, after something it imports has set sys.stdout = sys.__stdout__
    # (which would also undo pytest's / a notebook's capture): silence both, then restore them
    stdout, dunder = sys.stdout, sys.__stdout__
    sys.stdout = sys.__stdout__ = io.StringIO()
    try:
        mod = require(module, pip_name, env_id)
    finally:
        sys.stdout, sys.__stdout__ = stdout, dunder
    return jax, mod


def strong(jax, tree):
    """Reset leaves built from python scalars are weak-typed; step outputs are not, so without
    this cast a jitted step would compile twice."""
    return jax.tree.map(lambda x: x.astype(x.dtype), tree)


def where_done(jnp, done, new, old):
    """`new` on the rows of the envs that ended, `old` elsewhere (for every leaf of a tree)."""
    return jnp.where(done.reshape(done.shape + (1,) * (old.ndim - 1)), new, old)


class Compiled:
    """Base of a family's compiled object (`c` above): `warm_up` compiles its reset and step for a batch
    size, once per process; the family sets `self.warm = set()` and gives `idle_actions`."""

    warm: set[int]

    def idle_actions(self, num_envs: int) -> np.ndarray:
        """Valid actions for every agent of `num_envs` envs, to compile the step with."""
        raise NotImplementedError

    def warm_up(self, num_envs: int) -> None:
        """Compile reset and step for this batch size (once per process, per batch size)."""
        if num_envs in self.warm:
            return
        key = self.jax.device_put(self.jax.random.key(0), self.cpu)
        state, _ = self.reset(key, num_envs)
        self.jax.block_until_ready(self.step(key, state, self.idle_actions(num_envs)))
        self.warm.add(num_envs)


def check_backend(env_id: str, backend: str, backends: tuple[str, ...], vectorization: str) -> None:
    """The errors of a family with a jax backend beside a Python one: an unknown backend, and
    `vectorization` (an option of the Python backend's vector env) asked of the jax one."""
    if backend not in backends:
        raise ValueError(f"{env_id}: backend must be one of {backends} (default {backends[0]!r}), got {backend!r}")
    python = next(b for b in backends if b != "jax")
    if backend == "jax" and vectorization != "sync":
        raise ValueError(
            f"{env_id}: vectorization={vectorization!r} applies to backend={python!r} only (the jax backend "
            f"steps the whole batch in one call); pass backend={python!r} or drop vectorization"
        )


def batched_reset_step(jax, reset_one, step_one):
    """The jitted reset_batch(key, num_envs) and step_batch(key, states, actions) of a family, from its
    one-env `reset_one(key) -> (state, batch)` and `step_one(key, state, actions) -> (state, batch, out)`
    (out = (reward, agent_rewards, terminated, truncated, *metrics)), vmapped over the batch.

    step_batch auto-resets in the same step: the envs that ended are replaced by fresh ones and their
    last batch is kept in the output for bootstrapping (a batch-level cond, so that steps where no
    env ended skip the reset's work)."""
    jnp = jax.numpy

    def reset_batch(key, num_envs):
        return jax.vmap(reset_one)(jax.random.split(key, num_envs))

    def step_batch(key, state, actions):
        key, k_step, k_reset = jax.random.split(key, 3)
        E = actions.shape[0]
        state, final, out = jax.vmap(step_one)(jax.random.split(k_step, E), state, actions)
        done = out[2] | out[3]  # terminated | truncated

        def auto_reset(state):
            new_state, first = reset_batch(k_reset, E)
            pick = functools.partial(where_done, jnp, done)
            return jax.tree.map(pick, new_state, state), jax.tree.map(pick, first, final)

        state, batch = jax.lax.cond(done.any(), auto_reset, lambda state: (state, final), state)
        return key, state, batch, (*out, *final)

    return jax.jit(reset_batch, static_argnums=1), jax.jit(step_batch)


class JaxVecEnv(MultiAgentVecEnv):
    """Shared reset / step of the jax-batched families; a subclass sets `c`, the sizes and spaces."""

    c: Any
    _seed: int = 0
    _key = None
    _state = None
    _avail = None

    @staticmethod
    def _np(x, dtype) -> np.ndarray:
        return np.array(x, dtype=dtype)  # a writable copy (np.asarray of a jax array is read-only)

    def _pack(self, batch) -> dict[str, np.ndarray]:
        obs, state, avail, alive = batch
        out = {"obs": self._np(obs, np.float32), "state": self._np(state, np.float32), "alive": self._np(alive, bool)}
        if self.discrete:
            out["avail"] = self._np(avail, bool)
        return out

    def _actions(self, actions) -> np.ndarray:
        """The checked actions as the compiled step takes them."""
        actions = self.check_actions(actions, self._avail)
        return actions.astype(np.int32) if self.discrete else actions

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """New episodes in every env; the key comes from `seed` (make()'s seed at the first
        reset), or, on later resets without a seed, continues the env's random stream."""
        jax = self.c.jax
        if seed is not None or self._key is None:
            key = jax.device_put(jax.random.key(self._seed if seed is None else seed), self.c.cpu)
        else:
            key = self._key
        key, reset_key = jax.random.split(key)
        self._key = key
        self._state, batch = self.c.reset(reset_key, self.num_envs)
        self._return = np.zeros(self.num_envs)
        self._length = np.zeros(self.num_envs, np.int64)
        batch = self._pack(jax.device_get(batch))
        self._avail = batch.get("avail")  # the next step's actions are checked against it
        return batch

    def step(self, actions):
        if self._state is None:
            raise RuntimeError(f"{self.env_id}: call reset() before step()")
        actions = self._actions(actions)
        self._key, self._state, batch, out = self.c.step(self._key, self._state, actions)
        batch, out = self.c.jax.device_get((batch, out))  # one transfer for everything
        reward, agent_rewards, terminated, truncated, *rest = out
        metrics, final = rest[: len(self.metric_names)], rest[len(self.metric_names) :]
        reward = self._np(reward, np.float32)
        terminated, truncated = self._np(terminated, bool), self._np(truncated, bool)
        info: dict[str, Any] = {
            "agent_rewards": self._np(agent_rewards, np.float32),
            **{f"final_{key}": value for key, value in self._pack(final).items()},
        }
        self._return += reward
        self._length += 1
        done = terminated | truncated
        if done.any():
            info["episode"] = {"return": np.where(done, self._return, 0.0), "length": np.where(done, self._length, 0)}
            for name, value in zip(self.metric_names, metrics):
                info["episode"][name] = np.where(done, np.asarray(value, np.float64), 0.0)
            self._return[done] = 0.0
            self._length[done] = 0
        batch = self._pack(batch)
        self._avail = batch.get("avail")
        return batch, reward, terminated, truncated, info
