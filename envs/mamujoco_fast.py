"""Multi-Agent MuJoCo stepped directly with `mujoco`: the fast path of `envs.mamujoco` (backend="mujoco").

The same task as gymnasium-robotics' `mamujoco_v1` over gymnasium's v5 robots (same XML files,
frame skip, reset noise, healthy ranges, reward terms; see `ROBOTS`), without its per-agent Python:

- physics: per env, one `mj_step(nstep=frame_skip)`, plus `mj_rnePostConstraint` (which fills the
  contact forces `cfrc_ext`) where contact forces are read (Ant, Humanoid), as gymnasium's
  `MujocoEnv.do_simulation` does (it always calls it; nothing else reads what it computes);
- observations: after the step, the MjData fields anything reads (of qpos, qvel, cinert, cvel,
  qfrc_actuator, cfrc_ext, and the body positions the reward needs) are copied into one row of a
  float64 array `raw [E, R + 1 + X]` (column R stays 0, for padding). Every agent's observation and
  the state are then ONE gather `raw[:, index]` and one clip for the whole batch;
- the index arrays come from gymnasium-robotics itself (`layout_of`): probe values are
  written into the reference env's MjData and its own observation code is called, so each output
  element names the raw element it copies and the clip bounds it applies (MaMuJoCo clips Ant's
  contact forces to [-1, 1] and some Walker/Hopper velocities to [-10, 10]);
- rewards, falls and resets are batched numpy over the same arrays; each env has its own
  `np.random.Generator` seeded as gymnasium seeds its envs and drawn in the same order, so the
  same seed gives the same reset states as the reference path (and the equivalence test needs no
  state copying).
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from envs.core import MultiAgentVecEnv, require

FIELDS = ("qpos", "qvel", "cinert", "cvel", "qfrc_actuator", "cfrc_ext")  # what MaMuJoCo's observations read


@dataclass(frozen=True)
class Robot:
    """The settings of one gymnasium v5 robot (the defaults of gymnasium/envs/mujoco/<name>_v5.py)."""

    module: str  # gymnasium.envs.mujoco.<module>: its XML default and camera come from there
    xml: str
    frame_skip: int
    reset_noise: float
    qvel_noise: str  # "normal" (Ant, HalfCheetah) or "uniform"
    forward_weight: float
    ctrl_weight: float
    healthy_reward: float = 0.0
    position: str = "qpos0"  # the x coordinate the forward reward differentiates


ROBOTS = {
    "Ant": Robot("ant_v5", "ant.xml", 5, 0.1, "normal", 1.0, 0.5, 1.0, position="xpos1"),
    "HalfCheetah": Robot("half_cheetah_v5", "half_cheetah.xml", 5, 0.1, "normal", 1.0, 0.1),
    "Hopper": Robot("hopper_v5", "hopper.xml", 4, 5e-3, "uniform", 1.0, 1e-3, 1.0),
    "Walker2d": Robot("walker2d_v5", "walker2d_v5.xml", 4, 5e-3, "uniform", 1.0, 1e-3, 1.0),
    "Humanoid": Robot("humanoid_v5", "humanoid.xml", 5, 1e-2, "uniform", 1.25, 0.1, 5.0, position="mass_center"),
}


def healthy(scenario: str, f: dict[str, np.ndarray]) -> np.ndarray:
    """[E] bool: the v5 robot's `is_healthy` (a fall terminates the episode); HalfCheetah never falls."""
    qpos, qvel = f["qpos"], f["qvel"]
    if scenario == "Ant":  # finite state, 0.2 <= torso z <= 1.0
        finite = np.isfinite(qpos).all(1) & np.isfinite(qvel).all(1)
        return finite & (0.2 <= qpos[:, 2]) & (qpos[:, 2] <= 1.0)
    if scenario == "Hopper":  # |qpos[2:], qvel| < 100, z > 0.7, |angle| < 0.2
        rest = np.concatenate([qpos[:, 2:], qvel], axis=1)
        ok = ((-100.0 < rest) & (rest < 100.0)).all(1)
        return ok & (0.7 < qpos[:, 1]) & (-0.2 < qpos[:, 2]) & (qpos[:, 2] < 0.2)
    if scenario == "Walker2d":  # 0.8 < z < 2, |angle| < 1
        return (0.8 < qpos[:, 1]) & (qpos[:, 1] < 2.0) & (-1.0 < qpos[:, 2]) & (qpos[:, 2] < 1.0)
    if scenario == "Humanoid":  # 1 < torso z < 2
        return (1.0 < qpos[:, 2]) & (qpos[:, 2] < 2.0)
    return np.ones(len(qpos), bool)


def reward(scenario: str, robot: Robot, f: dict[str, np.ndarray], ctrl: np.ndarray, x_velocity, is_healthy):
    """[E] float64: forward + healthy - control cost - contact cost, as each v5 robot's `_get_rew`."""
    r = robot.forward_weight * x_velocity + robot.healthy_reward * is_healthy
    r = r - robot.ctrl_weight * np.square(ctrl).sum(1)
    if scenario == "Ant":  # contact forces of every body (the world's too), clipped to [-1, 1]
        r = r - 5e-4 * np.square(np.clip(f["cfrc_ext"], -1.0, 1.0)).sum((1, 2))
    elif scenario == "Humanoid":  # unclipped contact forces, the cost capped at 10
        r = r - np.minimum(5e-7 * np.square(f["cfrc_ext"]).sum((1, 2)), 10.0)
    return r


@dataclass(frozen=True)
class Layout:
    """Where a task's observations come from, as index arrays into the raw array of MjData fields."""

    index: np.ndarray  # [N * obs_dim + S]: the raw column of every agent's (padded) obs element, then the state's
    low: np.ndarray  # [N * obs_dim + S]: the clip bounds of each element (-inf / inf: none)
    high: np.ndarray
    obs_dims: list[int]
    act_index: np.ndarray  # [robot's actuators]: each actuator's position in the flat [N * act_dim] actions
    act_dims: list[int]
    n_raw: int  # R: the number of MjData numbers in FIELDS; column R is the zero that padding reads


@functools.cache
def layout_of(env_id: str, agent_obsk: int) -> Layout:
    """Read the observation layout off gymnasium-robotics' own code, by probing.

    Probe values are written into the MjData of a reference env, and its own `_get_obs_agent` and
    `state` are called: a small distinct value per MjData number tells which number each output
    element copies; huge positive and negative values tell which elements it clips, and where.
    """
    from envs import mamujoco

    ref = mamujoco._make_parallel_env(env_id, agent_obsk, mamujoco.EPISODE_LIMIT, None)
    data = ref.single_agent_env.unwrapped.data
    sizes = [getattr(data, name).size for name in FIELDS]
    R = sum(sizes)

    def outputs(values: np.ndarray) -> list[np.ndarray]:
        """Every agent's observation, then the state, of an MjData holding `values`."""
        for name, start, size in zip(FIELDS, np.cumsum([0, *sizes]), sizes):
            getattr(data, name).flat[:] = values[start : start + size]
        return [np.asarray(ref._get_obs_agent(i), np.float64) for i in range(ref.num_agents)] + [ref.state()]

    small = (np.arange(R) + 1.0) / (2.0 * (R + 1))  # distinct, in (0, 0.5): inside every clip range
    big = 1e9 * (np.arange(R) + 1.0)
    obs_dims = [len(o) for o in outputs(small)[:-1]]
    D = max(obs_dims)
    pad = lambda out: [np.pad(o, (0, D - len(o)), constant_values=np.nan) for o in out[:-1]] + [out[-1]]
    out_small, out_high, out_low = (np.concatenate(pad(outputs(v))) for v in (small, big, -big))
    ref.close()

    real = ~np.isnan(out_small)
    index = np.full(len(out_small), R)  # padding reads column R, always 0
    index[real] = np.rint(out_small[real] * 2.0 * (R + 1)).astype(np.int64) - 1
    if not np.array_equal(small[index[real]], out_small[real]):
        raise RuntimeError(f"{env_id}: an observation element is not a copy of one MjData number")
    high, low = np.full(len(index), np.inf), np.full(len(index), -np.inf)
    high[real] = np.where(out_high[real] == big[index[real]], np.inf, out_high[real])
    low[real] = np.where(out_low[real] == -big[index[real]], -np.inf, out_low[real])

    act_dims = [len(part) for part in ref.agent_action_partitions]
    act_index = np.zeros(sum(act_dims), np.int64)
    for i, part in enumerate(ref.agent_action_partitions):
        for j, node in enumerate(part):
            act_index[node.act_ids] = i * max(act_dims) + j
    return Layout(index, low, high, obs_dims, act_index, act_dims, R)


class MujocoMultiAgentEnv(MultiAgentVecEnv):
    """`num_envs` Multi-Agent MuJoCo envs as MjModel/MjData pairs, observed through a `Layout`."""

    def __init__(self, env_id: str, num_envs: int, seed: int | None, agent_obsk: int, max_episode_steps: int,
                 render_mode: str | None = None):  # fmt: skip
        mujoco = require("mujoco", "mujoco", env_id)
        from envs.mamujoco import TASKS

        self.mujoco = mujoco
        self.env_id, self.num_envs, self.episode_limit = env_id, num_envs, max_episode_steps
        self.scenario = TASKS[env_id][0]
        self.robot = robot = ROBOTS[self.scenario]
        self.layout = layout = layout_of(env_id, agent_obsk)
        self._clip = bool(np.isfinite(layout.low).any() or np.isfinite(layout.high).any())

        self._module = importlib.import_module(f"gymnasium.envs.mujoco.{robot.module}")
        path = os.path.join(os.path.dirname(self._module.__file__), "assets", robot.xml)
        self.model = m = mujoco.MjModel.from_xml_path(path)
        m.vis.global_.offwidth, m.vis.global_.offheight = 480, 480  # gymnasium's frame size
        self.datas = [mujoco.MjData(m) for _ in range(num_envs)]
        self.init_qpos, self.init_qvel = self.datas[0].qpos.copy(), self.datas[0].qvel.copy()
        self.dt = m.opt.timestep * robot.frame_skip

        # raw [E, R + 1 + X]: the MjData fields of the layout (R numbers), a column of zeros (the
        # padding reads it), then the body positions whose change the forward reward measures
        shapes = {"qpos": (m.nq,), "qvel": (m.nv,), "cinert": (m.nbody, 10), "cvel": (m.nbody, 6),
                  "qfrc_actuator": (m.nv,), "cfrc_ext": (m.nbody, 6), "xpos": (m.nbody, 3),
                  "xipos": (m.nbody, 3)}  # fmt: skip
        position = {"xpos1": ["xpos"], "mass_center": ["xipos"]}.get(robot.position, [])
        columns, start = {}, 0
        for name in (*FIELDS, "pad", *position):
            size = int(np.prod(shapes[name])) if name in shapes else 1
            columns[name], start = slice(start, start + size), start + size
        assert columns["pad"].start == layout.n_raw
        self._raw = np.zeros((num_envs, start))
        # the raw array's fields by name, as [E, ...] views (for the rewards and falls)
        self.fields = {n: self._raw[:, columns[n]].reshape(num_envs, *shapes[n]) for n in columns if n != "pad"}
        # copy only what is read: the fields the layout gathers, contact forces where the reward uses them
        read = {
            name
            for name in FIELDS
            if ((columns[name].start <= layout.index) & (layout.index < columns[name].stop)).any()
        }
        if self.scenario in ("Ant", "Humanoid"):
            read.add("cfrc_ext")
        used = [name for name in (*FIELDS, *position) if name in read or name in position]
        self._rne = "cfrc_ext" in used  # mj_rnePostConstraint computes cfrc_ext, which nothing else reads
        # per env: (raw row slice, MjData array) pairs, and the ctrl array (MjData's properties, fetched once)
        self._copies = [
            [(self._raw[e, columns[n]], getattr(d, n).reshape(-1)) for n in used] for e, d in enumerate(self.datas)
        ]
        self._ctrls = [d.ctrl for d in self.datas]

        # spaces, as gymnasium-robotics declares them
        self.n_agents = len(layout.obs_dims)
        low, high = m.actuator_ctrlrange.astype(np.float32).T
        self.observation_spaces = [gym.spaces.Box(-np.inf, np.inf, (d,), np.float64) for d in layout.obs_dims]
        self.action_spaces = [gym.spaces.Box(low[0], high[0], (d,), np.float32) for d in layout.act_dims]
        self.state_dim = len(layout.index) - self.n_agents * max(layout.obs_dims)
        self._init_sizes()

        self._seed = seed
        self._rngs: list[np.random.Generator] = []
        self._t = np.zeros(num_envs, np.int64)
        self._return = np.zeros(num_envs)
        self.render_mode, self._renderer = render_mode, None
        self._alive = np.ones((num_envs, self.n_agents), bool)  # no agent dies in MuJoCo

    # ------------------------------------------------------------------ observations
    def _copy_fields(self, e: int) -> None:
        for dst, src in self._copies[e]:
            dst[:] = src

    def _views(self) -> tuple[np.ndarray, np.ndarray]:
        """obs [E, N, obs_dim] and state [E, S] (float32): one gather and one clip for the whole batch."""
        out = self._raw[:, self.layout.index]
        if self._clip:  # np.clip's bounds as two ufuncs in place (np.clip's Python wrapper costs as much)
            np.maximum(out, self.layout.low, out=out)
            np.minimum(out, self.layout.high, out=out)
        out = out.astype(np.float32)
        n = self.n_agents * self.obs_dim
        return out[:, :n].reshape(self.num_envs, self.n_agents, self.obs_dim), out[:, n:]

    def _batch(self) -> dict[str, np.ndarray]:
        obs, state = self._views()
        return {"obs": obs, "state": state, "alive": self._alive.copy()}

    def _x_position(self) -> np.ndarray:
        """[E] the x coordinate whose change per second is the forward reward."""
        if self.robot.position == "xpos1":  # Ant: the torso body's frame
            return self.fields["xpos"][:, 1, 0].copy()
        if self.robot.position == "mass_center":  # Humanoid: the mass-weighted body centres
            mass = self.model.body_mass
            return self.fields["xipos"][:, :, 0] @ mass / mass.sum()
        return self.fields["qpos"][:, 0].copy()

    # ------------------------------------------------------------------------- reset
    def _reset_one(self, e: int) -> None:
        """gymnasium's MujocoEnv.reset + the v5 robot's reset_model, with env e's generator."""
        mujoco, d, rng, noise = self.mujoco, self.datas[e], self._rngs[e], self.robot.reset_noise
        mujoco.mj_resetData(self.model, d)
        qpos = self.init_qpos + rng.uniform(-noise, noise, self.model.nq)
        if self.robot.qvel_noise == "normal":
            qvel = self.init_qvel + noise * rng.standard_normal(self.model.nv)
        else:
            qvel = self.init_qvel + rng.uniform(-noise, noise, self.model.nv)
        d.qpos[:], d.qvel[:] = qpos, qvel
        mujoco.mj_forward(self.model, d)
        self._copy_fields(e)
        self._t[e], self._return[e] = 0, 0.0

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        # the first reset uses make()'s seed; env e of the batch is seeded with seed + e (as gymnasium seeds)
        seed, self._seed = (self._seed if seed is None else seed), None
        if seed is not None or not self._rngs:
            self._rngs = [gym.utils.seeding.np_random(None if seed is None else seed + e)[0]
                          for e in range(self.num_envs)]  # fmt: skip
        for e in range(self.num_envs):
            self._reset_one(e)
        return self._batch()

    # -------------------------------------------------------------------------- step
    def step(self, actions):
        if not self._rngs:
            raise RuntimeError(f"{self.env_id}: call reset() before step()")
        actions = self.check_actions(actions, None)
        E, mujoco, model, fs = self.num_envs, self.mujoco, self.model, self.robot.frame_skip
        # each agent's actions into the robot's actuator order (gymnasium-robotics' agent partition)
        ctrl = actions.reshape(E, -1)[:, self.layout.act_index].astype(np.float64)
        x_before = self._x_position()
        step, rne = mujoco.mj_step, mujoco.mj_rnePostConstraint if self._rne else None
        for d, d_ctrl, copies, c in zip(self.datas, self._ctrls, self._copies, ctrl):
            d_ctrl[:] = c
            step(model, d, fs)
            if rne is not None:
                rne(model, d)
            for dst, src in copies:
                dst[:] = src
        x_velocity = (self._x_position() - x_before) / self.dt
        is_healthy = healthy(self.scenario, self.fields)
        rew = reward(self.scenario, self.robot, self.fields, ctrl, x_velocity, is_healthy)
        terminated = ~is_healthy
        self._t += 1
        self._return += rew
        truncated = (self._t >= self.episode_limit) & ~terminated
        batch = self._batch()
        reward32 = rew.astype(np.float32)
        info: dict[str, Any] = {"agent_rewards": np.repeat(reward32[:, None], self.n_agents, 1)}
        for key in batch:
            info[f"final_{key}"] = batch[key].copy()
        done = terminated | truncated
        if done.any():
            info["episode"] = {"return": np.where(done, self._return, 0.0),
                               "length": np.where(done, self._t, 0).astype(np.float64)}  # fmt: skip
            for e in np.flatnonzero(done):  # same-step auto-reset
                self._reset_one(e)
            fresh = self._batch()
            for key in batch:
                batch[key][done] = fresh[key][done]
        return batch, reward32, terminated, truncated, info

    # ------------------------------------------------------------------------ render
    def render(self):
        """The frame of env 0 (rgb [480, 480, 3]), drawn by gymnasium's own MuJoCo renderer and camera."""
        if self.render_mode != "rgb_array":
            raise ValueError(f"{self.env_id}: render() needs make(..., render_mode='rgb_array')")
        if self._renderer is None:
            from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

            camera = getattr(self._module, "DEFAULT_CAMERA_CONFIG", None)
            self._renderer = MujocoRenderer(self.model, self.datas[0], camera, 480, 480)
        return self._renderer.render("rgb_array")

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
