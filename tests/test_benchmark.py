"""benchmark/: the sweep runner on Ray (run.py), evaluation, plots and the random-policy baseline."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time

import pytest

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


def test_the_epymarl_experiment_runs_at_epymarls_budgets_on_the_jax_backends():
    cmds = [" ".join(c[1:]) for c in run.commands(run.Args(experiment="epymarl", seeds=[1]))]
    assert len(cmds) == 3 * 6  # (2 LBF tasks, 1 RWARE task) x the six files
    tail = "--env-options backend=jax --total-timesteps {} --eval-interval {} --eval-episodes 100"
    assert cmds[0] == "ia2c.py --env-id lbf-8x8-2p-2f-coop --seed 1 " + tail.format(20_050_000, 1_002_500)
    assert cmds[-1] == "maddpg.py --env-id rware-tiny-4ag --seed 1 " + tail.format(2_050_000, 102_500)


def test_each_run_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert run.thread_env(threads=4) == {"OMP_NUM_THREADS": "4"}
    one = run.thread_env(threads=1)
    assert one["OMP_NUM_THREADS"] == "1" and "intra_op_parallelism_threads=1" in one["XLA_FLAGS"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
    assert "OMP_NUM_THREADS" not in run.thread_env(threads=1)
    # torch's own thread count follows --cpus-per-run, before --extra (which may override it)
    cmd = run.commands(run.Args(algos=["mappo"], env_ids=["mpe-spread"], seeds=[1], cpus_per_run=2, extra="--seed 5"))
    assert cmd[0][2:] == ["--env-id", "mpe-spread", "--seed", "1", "--torch-threads", "2", "--seed", "5"]


def test_dry_run_prints_the_commands_without_starting_ray(monkeypatch, capsys):
    monkeypatch.setattr(run, "start_ray", lambda args: pytest.fail("--dry-run started Ray"))
    assert run.main(run.Args(experiment="smax-mat-table", seeds=[1, 2], dry_run=True)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * 5 * 2  # 3 maps x (MAT, MAT-Dec, MAPPO, HAPPO, MAT clip 0.05) x 2 seeds
    assert lines[0] == "mat.py --env-id smax-3m --seed 1 --total-timesteps 500000 --eval-interval 50000"
    assert "happo.py --env-id smax-3s5z --seed 2 --total-timesteps 3000000 --eval-interval 300000" in lines


def test_an_unreachable_cluster_address_fails_within_seconds(tmp_path):
    closed = socket.socket()  # a port nothing listens on
    closed.bind(("127.0.0.1", 0))
    not_ray = socket.socket()  # a port something that is not Ray listens on
    not_ray.bind(("127.0.0.1", 0))
    not_ray.listen()
    with closed, not_ray:
        port, other = closed.getsockname()[1], not_ray.getsockname()[1]
        for address in [
            f"127.0.0.1:{port}",
            f"ray://127.0.0.1:{port}",
            "no-such-host.invalid:6379",
            f"127.0.0.1:{other}",
        ]:
            start = time.time()
            args = run.Args(algos=["mappo"], env_ids=["matrix-climbing"], seeds=[1], address=address,
                            connect_timeout=5, out_dir=str(tmp_path))  # fmt: skip
            with pytest.raises(SystemExit, match=f"no Ray cluster answers at {re.escape(address)}"):
                run.main(args)
            assert time.time() - start < 10, address
    with pytest.raises(SystemExit, match="give auto, HOST:PORT"):
        run.check_reachable("head-node", 1)


TINY = "--total-timesteps 64 --num-envs 2 --num-steps 16 --update-epochs 1 --eval-episodes 1"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_a_sweep_of_two_runs_reports_both_and_resumes(local_ray, tmp_path, capsys):
    args = run.Args(algos=["mappo"], env_ids=["matrix-climbing"], seeds=[1, 2], extra=TINY, out_dir=str(tmp_path))
    assert run.main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| mappo.py")]
    assert len(rows) == 2 and "[2/2 done, 0 running, 0 failed]" in out
    for seed, row in zip([1, 2], rows):
        command, status, wall, ret, win, run_dir = [cell.strip() for cell in row.strip("|").split("|")]
        assert command == f"mappo.py --env-id matrix-climbing --seed {seed} {TINY}" and status == "ok"
        assert float(ret) in {11.0, -30.0, 0.0, 7.0, 6.0, 5.0} and win == "-"  # a payoff of the climbing game
        files = sorted(os.listdir(tmp_path / run_dir))
        assert files[0].startswith("events.out.tfevents.") and files[1:] == ["mappo.pt", "sweep.json"]
    # the same sweep again: both finished, nothing runs
    assert run.main(args) == 0
    out = capsys.readouterr().out
    assert "2 runs, 2 finished before" in out and out.count("skipped (finished before)") == 2
    # another sweep into the same folder counts its own runs only, not the finished runs beside them
    other = run.Args(algos=["mappo"], env_ids=["matrix-climbing"], seeds=[1, 3], extra=TINY, out_dir=str(tmp_path))
    assert run.main(other) == 0
    out = capsys.readouterr().out
    assert "2 runs, 1 finished before" in out and "[1/1 done, 0 running, 0 failed]" in out


def kill_first(marker: str, killed: list, timeout: float = 300) -> None:
    """SIGKILLs the first process whose command line holds `marker` (the run's algorithm-file process);
    the timeout is generous: on a loaded machine a Ray worker can take a minute to start the run."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if marker.encode() in argv and any(a.endswith(b"mappo.py") for a in argv):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
                return
        time.sleep(0.05)


def test_a_killed_run_is_started_again_and_its_folder_comes_back(local_ray, tmp_path):
    killed = []
    killer = threading.Thread(target=kill_first, args=("killed-once", killed))
    killer.start()
    args = run.Args(algos=["mappo"], env_ids=["matrix-climbing"], seeds=[3], extra=f"{TINY} --exp-name killed-once",
                    retries=1, collect=True, out_dir=str(tmp_path))  # fmt: skip
    (row,) = run.sweep(args)
    killer.join()
    assert len(killed) == 1
    assert row["status"] == "ok, attempt 2" and row["code"] == 0
    # --collect: the run started in a temporary folder of its node; its folder and log came back here
    assert os.path.isfile(tmp_path / row["run_dir"] / "killed-once.pt")
    with open(tmp_path / row["run_dir"] / "sweep.json") as f:
        assert json.load(f)["status"] == "ok"
    assert "# attempt 2" in (tmp_path / row["log"]).read_text()


def test_a_run_started_again_resumes_from_its_last_save_and_sets_aside_a_folder_without_one(tmp_path, monkeypatch):
    import mappo
    from benchmark.plot import read_scalars
    from envs import experiment

    flags = dict(env_id="matrix-climbing", seed=1, total_timesteps=800, num_envs=8, num_steps=25, update_epochs=1,
                 eval_interval=200, eval_episodes=1)  # fmt: skip
    cmd = [sys.executable, "mappo.py", *[f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]]
    os.makedirs(tmp_path / "runs" / "logs")
    monkeypatch.chdir(tmp_path)
    # an earlier attempt, stopped after 600 of its 800 steps; its last save was at 400
    saves, real_save = [], experiment.save_checkpoint
    monkeypatch.setattr(experiment, "save_checkpoint", lambda path, payload: saves.append(path) or (
        real_save(path, payload) if len(saves) <= 2 else path))  # fmt: skip
    earlier = mappo.train(mappo.Args(**flags))["run_dir"]
    monkeypatch.setattr(experiment, "save_checkpoint", real_save)
    # set aside by its sweep as a failed run (as one stopped with SIGTERM, exit 143 after a save, is)
    (tmp_path / "runs" / "failed").mkdir()
    os.replace(tmp_path / earlier, tmp_path / "runs" / "failed" / os.path.basename(earlier))
    (tmp_path / "runs" / "failed" / os.path.basename(earlier) / "sweep.json").write_text('{"status": "failed"}')
    log = tmp_path / "runs" / "logs" / run.log_name(cmd)
    log.write_text(f"# attempt 1\nlogging to {earlier} (tensorboard --logdir runs)\n")
    result = run.execute(cmd, str(tmp_path), {}, code_root=run.ROOT)
    assert result["code"] == 0 and result["run_dir"] == earlier, log.read_text()
    assert "# resumed from runs/" in log.read_text() and "# attempt 1" in log.read_text()  # appended, not replaced
    assert [step for step, _ in read_scalars(str(tmp_path / earlier), "losses/value_loss")] == [200, 400, 600, 800]
    assert run.earlier_attempt(str(tmp_path), str(log)) is None and os.path.isdir(tmp_path / earlier)  # finished
    # a run folder without a save (killed before its first evaluation): set aside, out of benchmark/plot.py's way
    os.remove(tmp_path / earlier / "sweep.json")
    os.remove(tmp_path / earlier / "mappo.pt")
    assert run.earlier_attempt(str(tmp_path), str(log)) is None  # then execute starts the command over
    assert os.path.isdir(tmp_path / "runs" / "failed" / os.path.basename(earlier))


def test_each_run_log_starts_with_the_command_and_the_machine(tmp_path):
    (tmp_path / "hello.py").write_text("print(42)")
    result = run.execute([sys.executable, "hello.py", "--x"], str(tmp_path), {}, code_root=str(tmp_path))
    assert result["code"] == 0 and result["run_dir"] is None and result["eval_return"] is None
    header_command, header_machine, output = (tmp_path / result["log"]).read_text().splitlines()
    assert header_command == "# hello.py --x"
    assert re.fullmatch(r"# torch \S+, CPU kernels \w+, \d+ cores", header_machine)
    assert output == "42"
    # commands too long for a file name: cut, and told apart by a hash of the whole command
    long = [[sys.executable, "hello.py", "--x" * 100, end] for end in ["a", "b"]]
    logs = [run.execute(cmd, str(tmp_path), {}, code_root=str(tmp_path))["log"] for cmd in long]
    assert logs[0] != logs[1] and all(len(os.path.basename(log)) <= 204 for log in logs)


def test_evaluate_reloads_every_saved_model_and_tables_them(tmp_path, monkeypatch, capsys):
    import mappo
    from benchmark import evaluate

    monkeypatch.chdir(tmp_path)
    for seed in (1, 2):
        args = mappo.Args(
            env_id="matrix-climbing",
            seed=seed,
            total_timesteps=64,
            num_envs=2,
            num_steps=16,
            update_epochs=1,
            eval_interval=0,
            eval_episodes=1,
            exp_name="tiny",
        )
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


def test_plot_table_gives_final_maximum_and_mean_over_training():
    import numpy as np

    from benchmark.plot import table

    # (step, value, seconds); a: max 3, mean 2, final 2 (the last 10% of 3 points: the last one); b: 8, 3, 8
    a = np.array([[10, 1, 60], [20, 3, 120], [30, 2, 180]], dtype=float)
    b = np.array([[10, 0, 60], [20, 1, 120], [30, 8, 240]], dtype=float)
    row = table("lbf-8x8-2p-2f-coop", {"ippo": [a, b]}, "charts/episodic_return").splitlines()[2]
    assert row == "| ippo | 5.00 ± 3.00 | 5.50 ± 2.50 | 2.50 ± 0.50 | 2 | 30 | 4 min |"
    # smoothed as plotted: a running mean over 2 points turns a into 1, 2, 2.5 and b into 0, 0.5, 4.5
    row = table("lbf-8x8-2p-2f-coop", {"ippo": [a, b]}, "charts/episodic_return", window=2).splitlines()[2]
    assert row == "| ippo | 5.00 ± 3.00 | 3.50 ± 1.00 | 1.75 ± 0.08 | 2 | 30 | 4 min |"


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


def test_plot_marks_the_published_values_in_their_experiments_colours(tmp_path, monkeypatch):
    import matplotlib.figure
    from torch.utils.tensorboard import SummaryWriter

    from benchmark import plot

    for name in ["smax-3s5z__mappo__1__0", "smax-3s5z__mat__1__0"]:
        writer = SummaryWriter(str(tmp_path / "runs" / name))
        for step in [50, 100]:
            writer.add_scalar("eval/win_rate", 0.5, step)
        writer.close()
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    args = plot.Args(runs_dir=str(tmp_path / "runs"), out_dir=str(tmp_path / "out"), tag="eval/win_rate",
                     published=["mat=1.0@3e6", "HAPPO [MAT]=0.9"])  # fmt: skip
    plot.main(args)
    lines = {line.get_label(): line for line in saved[0].axes[0].lines}
    mat, paper_mat, paper_happo = lines["mat (1 seed)"], lines["mat: published"], lines["HAPPO [MAT]: published"]
    assert list(paper_mat.get_ydata()) == [1.0, 1.0] and paper_mat.get_linestyle() == "--"
    assert paper_mat.get_color() == mat.get_color()  # the paper's line in the colour of our curve
    assert paper_happo.get_color() == "0.4" and list(paper_happo.get_ydata()) == [0.9, 0.9]  # no such experiment
    stars = [line for line in saved[0].axes[0].lines if line.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [3e6] and list(stars[0].get_ydata()) == [1.0]
    assert plot.parse_published(["a=0.5", "b=-1@2e6"]) == [("a", 0.5, None), ("b", -1.0, 2e6)]
    for bad in ["mat", "mat=high", "=0.5", "mat=0.5@soon"]:
        with pytest.raises(SystemExit, match="write NAME=VALUE or NAME=VALUE@STEPS"):
            plot.parse_published([bad])


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


# ------------------------------------------------------------------ train_sps: where the time goes
def test_train_sps_times_the_training_envs_steps_and_splits_the_rest():
    import numpy as np

    from benchmark.train_sps import StepTimer

    timer = StepTimer()
    with timer("matrix-climbing", num_envs=2) as env:  # a real env through the wrapper: its steps are timed
        env.reset()
        for _ in range(3):
            env.step(np.zeros((2, 2), np.int64))
    assert len(timer.made[0]["starts"]) == len(timer.made[0]["ends"]) == 3
    # hand-made timelines: a one-env probe, an evaluation env that stepped less, and the training env
    timer.made = [
        {"num_envs": 1, "starts": list(range(20)), "ends": list(range(20))},
        {"num_envs": 2, "starts": [100, 101], "ends": [100.5, 101.5]},
        # steps of 1 s; after step 4 (index 3) a 9 s gap (an update); the other gaps 1 s
        {"num_envs": 2, "starts": [0, 2, 4, 6, 16, 18], "ends": [1, 3, 5, 7, 17, 19]},
    ]
    # second half: steps 3..5, from the end of step 2 (t=5) to t=19: 14 s = 3 env + 3 x median gap 1 + 8 update
    assert timer.breakdown(num_envs=2) == {"env": 3, "act": 3, "update": 8, "env_steps": 3 * 2}
