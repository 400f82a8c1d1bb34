"""benchmark/run.py: the commands of an experiment and each run's share of the cores."""

from __future__ import annotations

import os

from benchmark import run


def test_experiment_commands_are_one_per_algorithm_env_and_seed():
    args = run.Args(experiment="param-sharing", seeds=[1, 2], extra="--total-timesteps 1000")
    cmds = run.commands(args)
    assert len(cmds) == 4 * 2 * 2  # 4 envs x (shared, independent) x 2 seeds
    first = cmds[0][1:]
    assert first[:6] == ["mappo.py", "--env-id", "smax-3m", "--seed", "1", "--share-params"]
    assert first[-2:] == ["--total-timesteps", "1000"]
    assert any("mappo-ind" in c for c in cmds)


def test_each_parallel_run_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert run.thread_env(workers=2)["OMP_NUM_THREADS"] == "4"
    assert "XLA_FLAGS" not in run.thread_env(workers=2)
    one = run.thread_env(workers=8)
    assert one["OMP_NUM_THREADS"] == "1" and "intra_op_parallelism_threads=1" in one["XLA_FLAGS"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
    assert run.thread_env(workers=8)["OMP_NUM_THREADS"] == "3"
