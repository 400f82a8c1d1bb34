"""benchmark/run.py: the commands of an experiment and each run's share of the cores."""

from __future__ import annotations

import os
import re
import sys

from benchmark import run


def test_experiment_commands_are_one_per_algorithm_env_and_seed():
    args = run.Args(experiment="param-sharing", seeds=[1, 2], extra="--total-timesteps 1000")
    cmds = run.commands(args)
    assert len(cmds) == 5 * 2 * 2  # 5 envs x (shared, independent) x 2 seeds
    first = cmds[0][1:]
    assert first[:6] == ["mappo.py", "--env-id", "smax-3m", "--seed", "1", "--share-params"]
    # the figure's own budget, then --extra; the algorithm file's parser keeps the last value, so --extra wins
    assert first[6:] == ["--total-timesteps", "500000", "--total-timesteps", "1000"]
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


def test_each_run_log_starts_with_the_command_and_the_machine(tmp_path):
    assert run.run([sys.executable, "-c", "print(42)"], str(tmp_path), dict(os.environ)) == 0
    (log,) = tmp_path.iterdir()
    header_command, header_machine, output = log.read_text().splitlines()
    assert header_command == "# -c 'print(42)'"
    assert re.fullmatch(r"# torch \S+, CPU kernels \w+, \d+ cores", header_machine)
    assert output == "42"


def test_evaluate_reloads_every_saved_model_and_tables_them(tmp_path, monkeypatch, capsys):
    import mappo
    from benchmark import evaluate

    monkeypatch.chdir(tmp_path)
    for seed in (1, 2):
        args = mappo.Args(env_id="matrix-climbing", seed=seed, total_timesteps=64, num_envs=2, num_steps=16,
                          update_epochs=1, eval_interval=0, eval_episodes=1, exp_name="tiny")
        mappo.train(args)
    models = evaluate.saved_models("runs", ["matrix-climbing"], [])
    assert [(m[1], m[2], m[3]) for m in models] == [("tiny", 1, "mappo"), ("tiny", 2, "mappo")]
    evaluate.main(evaluate.Args(runs_dir="runs", episodes=3))
    out = capsys.readouterr().out
    assert "| matrix-climbing | tiny |" in out and "| 2 |" in out
    assert len(os.listdir("runs")) == 2  # the evaluations wrote no run folders of their own

    evaluate.main(evaluate.Args(runs_dir="runs", episodes=2, per_agent=True))
    out = capsys.readouterr().out
    # per model: its return, then each of the 2 greedy episodes (one step each, on 2 parallel envs)
    # with one line per agent
    episode = r"  episode \d: 1 steps\n((?:    agent .*\n){2})"
    reports = re.findall(r"return ([-\d.]+), win rate nan\n" + episode + episode, out)
    assert len(reports) == 2
    for ret, *episodes in reports:
        for agents in episodes:
            rewards = re.findall(r"reward ([-\d.]+), actions \{\d: 1\}, changes 0", agents)  # one action, once
            # a deterministic policy on a one-step game: each episode pays the mean return, to every agent
            assert len(rewards) == 2 and all(float(r) == float(ret) for r in rewards)


def test_smoothing_over_env_steps_by_hand():
    import numpy as np

    from benchmark.plot import smoothed_over_steps

    steps, values = np.array([0.0, 10, 20, 30]), np.array([1.0, 2, 3, 4])
    # window (step - 15, step]: {0}, {0, 10}, {10, 20}, {20, 30}
    np.testing.assert_allclose(smoothed_over_steps(steps, values, 15), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(smoothed_over_steps(steps, values, 0), values)


def test_mean_curve_covers_only_the_steps_every_seed_has_logged():
    import numpy as np

    from benchmark.plot import mean_curve

    # two seeds' evaluations (step, value, seconds): the first at 50 and 100, the second at 100 and 150
    a = np.array([[50.0, 1.0, 0.0], [100.0, 3.0, 1.0]])
    b = np.array([[100.0, 5.0, 0.0], [150.0, 7.0, 1.0]])
    grid, mean, low, high = mean_curve([a, b], x_col=0, n=2)
    np.testing.assert_allclose(grid, [100.0, 100.0])  # from the latest first point to the earliest last one
    np.testing.assert_allclose(mean, [4.0, 4.0])
    grid, mean, low, high = mean_curve([a, a], x_col=0, n=3)
    np.testing.assert_allclose(grid, [50.0, 75.0, 100.0])  # no point before the first evaluation
    np.testing.assert_allclose([mean, low, high], [[1.0, 2.0, 3.0]] * 3)


def test_plot_draws_a_single_evaluation_as_a_dot(tmp_path, monkeypatch):
    import matplotlib.figure
    from torch.utils.tensorboard import SummaryWriter

    from benchmark import plot

    for name, steps in [("tsc-4x4__mappo__1__0", [50, 100]), ("tsc-4x4__maddpg__1__0", [30])]:
        writer = SummaryWriter(str(tmp_path / "runs" / name))
        for step in steps:
            writer.add_scalar("eval/episodic_return", -1.0, step)
        writer.close()
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    plot.main(plot.Args(runs_dir=str(tmp_path / "runs"), out_dir=str(tmp_path / "out"), tag="eval/episodic_return"))
    lines = {line.get_label().split()[0]: line for line in saved[0].axes[0].lines}
    assert lines["maddpg"].get_marker() == "o" and lines["mappo"].get_marker() in ("None", None, "")


def test_plot_over_wall_time_writes_its_own_file(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from benchmark import plot

    writer = SummaryWriter(str(tmp_path / "runs" / "tsc-4x4__mappo__1__0"))
    for step in [50, 100]:
        writer.add_scalar("eval/episodic_return", -1.0, step)
    writer.close()
    dirs = {"runs_dir": str(tmp_path / "runs"), "out_dir": str(tmp_path / "out")}
    for x in ["steps", "wall"]:
        plot.main(plot.Args(**dirs, tag="eval/episodic_return", x=x))
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [
        "tsc-4x4__eval_episodic_return.md",
        "tsc-4x4__eval_episodic_return.png",
        "tsc-4x4__eval_episodic_return__wall.md",
        "tsc-4x4__eval_episodic_return__wall.png",
    ]


def test_random_policy_return_on_the_climbing_game_by_hand():
    import numpy as np

    from benchmark.random_policy import random_episodes

    # one step, uniform over the 3 x 3 payoffs [[11, -30, 0], [-30, 7, 6], [0, 0, 5]]: expected -31 / 9
    metrics = random_episodes("matrix-climbing", episodes=4000, seed=0, num_envs=64)
    returns = metrics["return"]
    assert len(returns) == 4000 and "win" not in metrics
    np.testing.assert_array_equal(metrics["length"], 1)
    assert set(returns) <= {11.0, -30.0, 0.0, 7.0, 6.0, 5.0}
    assert abs(returns.mean() - (-31 / 9)) < 0.8  # the standard error of 4000 episodes is about 0.2
