"""Greedy evaluation of the saved models under runs/, over many episodes, as a markdown table.

    python benchmark/evaluate.py --env-ids smax-3m --episodes 100
    python benchmark/evaluate.py --env-ids mpe-spread --exp-names mappo mappo-ind --episodes 50
    python benchmark/evaluate.py --env-ids mpe-spread --episodes 200 --env-options backend=mpe2

The evaluations during training use few episodes (`--eval-episodes`, 10 by default), so their
win rates move in steps of 10%. This reloads the model each run saved (`runs/<run>/<exp_name>.pt`,
through the algorithm file's own `--checkpoint` path) and plays `--episodes` greedy episodes on
a fresh env seeded with the run's seed. One row per experiment (env id, exp_name): the mean ±
std over seeds of the return and, where the env reports it, the win rate.

`--per-agent` also prints, for each greedy episode of each model (the first episode of each of
the evaluation's min(episodes, 8) parallel envs), every agent's reward sum (info["agent_rewards"])
and, with discrete actions, how often it chose each action and how often it changed action: it
finds, e.g., the traffic light whose greedy policy never shows one of its green phases.

    python benchmark/evaluate.py --env-ids tsc-cologne8 --exp-names coma --episodes 2 --per-agent
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def saved_models(runs_dir: str, env_ids: list[str], exp_names: list[str]) -> list[tuple[str, str, int, str, str]]:
    """(env_id, exp_name, seed, algo, model path) of every run folder holding a saved model."""
    found = []
    for name in sorted(os.listdir(runs_dir)):
        parts = name.split("__")
        if len(parts) != 4:
            continue
        env_id, exp_name, seed = parts[0], parts[1], int(parts[2])
        if (env_ids and env_id not in env_ids) or (exp_names and exp_name not in exp_names):
            continue
        for file in sorted(os.listdir(os.path.join(runs_dir, name))):
            if file.endswith(".pt"):  # saved as <exp_name>.pt; the checkpoint names its algorithm file
                path = os.path.abspath(os.path.join(runs_dir, name, file))
                algo = torch.load(path, map_location="cpu", weights_only=False)["algo"]
                found.append((env_id, exp_name, seed, algo, path))
    return found


class EpisodeRecorder:
    """Records, from a vector env's steps, each env's actions and per-agent rewards until its first episode ends.

    A file's evaluation plays its greedy episodes on min(episodes, 8) parallel envs, so with up to 8
    episodes this records every one of them.
    """

    def __init__(self):
        self.actions, self.rewards, self.done = None, None, None

    def wrap(self, env):
        step = env.step

        def recording_step(actions):
            out = step(actions)
            _, _, term, trunc, info = out
            batch_actions = np.array(actions)  # a copy: the caller may reuse its array
            rewards = np.asarray(info["agent_rewards"], dtype=np.float64)
            if self.done is None:
                self.actions, self.rewards = [[] for _ in term], np.zeros_like(rewards)
                self.done = np.zeros(len(term), dtype=bool)
            for e in np.flatnonzero(~self.done):
                self.actions[e].append(batch_actions[e])
                self.rewards[e] += rewards[e]
            self.done |= np.asarray(term) | np.asarray(trunc)
            return out

        env.step = recording_step
        return env

    def report(self) -> list[str]:
        if self.done is None:  # the env was never stepped
            return []
        lines = []
        for e in np.flatnonzero(self.done):
            actions = np.array(self.actions[e])
            lines.append(f"  episode {e + 1}: {len(actions)} steps")
            for i, reward in enumerate(self.rewards[e]):
                line = f"    agent {i}: reward {reward:.2f}"
                if np.issubdtype(actions.dtype, np.integer):
                    chosen, counts = np.unique(actions[:, i], return_counts=True)
                    changes = int((np.diff(actions[:, i]) != 0).sum())
                    line += f", actions {dict(zip(chosen.tolist(), counts.tolist()))}, changes {changes}"
                lines.append(line)
        return lines


def evaluate(
    algo: str, env_id: str, seed: int, path: str, episodes: int, recorder=None, env_options: tuple[str, ...] = ()
) -> dict:
    """The algorithm file's own --checkpoint evaluation; with `recorder`, every env it makes is wrapped."""
    module = importlib.import_module(algo)
    options = tuple(env_options)
    args = module.Args(env_id=env_id, seed=seed, checkpoint=path, eval_episodes=episodes, env_options=options)
    make = module.envs.make
    if recorder is not None:
        module.envs.make = lambda *a, **k: recorder.wrap(make(*a, **k))
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:  # the evaluation's own run folder stays out of runs/
        os.chdir(tmp)
        try:
            return module.train(args)
        finally:
            os.chdir(cwd)
            module.envs.make = make


@dataclass
class Args:
    runs_dir: str = "runs"
    """folder holding the run folders"""
    env_ids: list[str] = field(default_factory=list)
    """only these env ids (default: all found)"""
    exp_names: list[str] = field(default_factory=list)
    """only these experiments (default: all found)"""
    episodes: int = 100
    """greedy episodes per saved model"""
    per_agent: bool = False
    """also print each agent's reward sum and action counts in each greedy episode (up to 8)"""
    env_options: list[str] = field(default_factory=list)
    """options of envs.make as KEY=VALUE pairs for the evaluation env (e.g. backend=mpe2)"""


def main(args: Args) -> None:
    models = saved_models(args.runs_dir, args.env_ids, args.exp_names)
    if not models:
        raise SystemExit(f"no saved models under {args.runs_dir!r} for env ids {args.env_ids} / {args.exp_names}")
    results: dict = defaultdict(list)
    for env_id, exp_name, seed, algo, path in models:
        recorder = EpisodeRecorder() if args.per_agent else None
        r = evaluate(algo, env_id, seed, path, args.episodes, recorder, args.env_options)
        print(f"{env_id} {exp_name} seed {seed}: return {r['eval_return']:.3f}, win rate {r['eval_win_rate']:.2f}")
        if recorder is not None:
            print("\n".join(recorder.report()))
        results[(env_id, exp_name)].append((r["eval_return"], r["eval_win_rate"]))
    print(f"\n| env | experiment | greedy return ({args.episodes} episodes) | win rate | seeds |")
    print("|---|---|---|---|---|")
    for (env_id, exp_name), rows in sorted(results.items()):
        ret, win = np.array(rows).T
        win_text = "—" if np.isnan(win).all() else f"{100 * win.mean():.1f}% ± {100 * win.std():.1f}"
        print(f"| {env_id} | {exp_name} | {ret.mean():.2f} ± {ret.std():.2f} | {win_text} | {len(rows)} |")


if __name__ == "__main__":
    main(tyro.cli(Args))
