"""The run plumbing (envs/experiment.py) and the one command-line vocabulary of the nine files:
run folders never shared, Ctrl-C saves the model, broken checkpoints refused with a clear error,
MP4 videos at the env's real speed that do not change the evaluation, the same flags and lines."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import math
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import envs
from envs import experiment
from tests.conftest import ALGOS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"num_envs": 2, "eval_episodes": 2, "eval_interval": 0}


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)


def tiny_args(algo: str, **overrides):
    module = importlib.import_module(algo)
    fields = {f.name for f in dataclasses.fields(module.Args)}
    values = {"env_id": "matrix-climbing", "total_timesteps": 64, "num_steps": 16, **TINY, **overrides}
    values.setdefault("chunk_length", 8)  # recurrent files: whole chunks per rollout
    if algo == "maddpg":
        values.update(learning_starts=16, batch_size=8)
    return module, module.Args(**{k: v for k, v in values.items() if k in fields})


# ------------------------------------------------------------------------------ run folders
def test_run_folders_started_in_the_same_second_are_distinct(monkeypatch):
    monkeypatch.setattr(experiment.time, "time", lambda: 1_700_000_000.0)
    made: list[str] = []
    threads = [threading.Thread(target=lambda: made.append(experiment.make_run_dir("x", "y", 1))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8, made
    assert sorted(made)[0] == os.path.join("runs", "x__y__1__1700000000")
    assert os.path.join("runs", "x__y__1__1700000000-2") in made


def test_a_run_that_fails_before_its_first_update_leaves_no_folder():
    with pytest.raises(RuntimeError, match="boom"), experiment.main():
        run_dir = experiment.make_run_dir("x", "y", 1)
        raise RuntimeError("boom")
    assert not os.path.exists(run_dir)
    with pytest.raises(RuntimeError, match="later"), experiment.main():  # after an update: kept
        run_dir = experiment.make_run_dir("x", "y", 2)
        training = experiment.Training(run_dir, 10)
        training.update(5, [1.0], [])
        training.close()
        raise RuntimeError("later")
    assert os.path.isdir(run_dir)


def test_a_run_that_raised_gives_ctrl_c_back():
    original = signal.getsignal(signal.SIGINT)
    experiment.Training("runs/a", 10)  # a train() that raised before closing its Training
    assert signal.getsignal(signal.SIGINT) != original
    experiment.Training("runs/b", 10).close()  # the next run of the process cleans up after it
    assert signal.getsignal(signal.SIGINT) == original


def test_ctrl_c_finishes_the_iteration_saves_the_model_and_exits_cleanly(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "mappo.py"), "--env-id", "matrix-climbing",
           "--total-timesteps", "100000000", "--eval-interval", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = proc.stdout.readline() + proc.stdout.readline()  # "rollout: ...", then "logging to runs/..."
    if "\nlogging to" not in first:  # then the Ctrl-C handler is in place; else stop the run, show its output
        proc.kill()
        raise AssertionError(first + proc.communicate(timeout=120)[0])
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out = first + proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert "Ctrl-C: stopping after this iteration" in out and "final eval:  skipped (interrupted" in out, out
    model_path = out.split("model:")[1].split()[0]
    ckpt = experiment.load_checkpoint(str(tmp_path / model_path), "mappo", "matrix-climbing")
    assert ckpt["args"]["num_iterations"] > 0


def test_sigterm_finishes_the_iteration_saves_the_training_state_and_exits_143(tmp_path):
    """SIGTERM (Slurm, Ray, kill) stops as a first Ctrl-C does, but exits 143: the run is not finished, and
    benchmark/run.py (or a job script) starts it again with --resume."""
    cmd = [sys.executable, os.path.join(ROOT, "mappo.py"), "--env-id", "matrix-climbing",
           "--total-timesteps", "100000000", "--eval-interval", "0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = proc.stdout.readline() + proc.stdout.readline()  # "rollout: ...", then "logging to runs/..."
    if "\nlogging to" not in first:
        proc.kill()
        raise AssertionError(first + proc.communicate(timeout=120)[0])
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out = first + proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out
    assert "SIGTERM: stopping after this iteration" in out and "Traceback" not in out, out
    model_path = out.split("model:")[1].split()[0]
    ckpt = experiment.load_checkpoint(str(tmp_path / model_path), "mappo", "matrix-climbing")
    assert 0 < ckpt["training"]["global_step"] < 100000000


# ------------------------------------------------------------------------------ checkpoints
def saved_model(tmp_path, weights=None) -> str:
    payload = {"algo": "mappo", "env_id": "matrix-climbing", "args": {}, "model": {"w": torch.ones(3, 3)}}
    if weights is not None:
        payload["model"]["w"] = weights
    return experiment.save_checkpoint(str(tmp_path / "model.pt"), payload)


def test_checkpoint_is_written_atomically(tmp_path):
    path = saved_model(tmp_path)
    assert os.listdir(tmp_path) == ["model.pt"]  # no temporary file left behind
    before = open(path, "rb").read()
    with pytest.raises(Exception):  # noqa: B017 (whatever pickling raises)
        experiment.save_checkpoint(path, {"algo": "mappo", "model": lambda: 0})  # a lambda cannot be pickled
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["model.pt"]
    assert experiment.load_checkpoint(path, "mappo", "matrix-climbing")["model"]["w"].sum() == 9


@pytest.mark.parametrize(
    "damage,message",
    [
        ("truncate", "truncated"),
        ("empty", "empty"),
        ("nan", "NaN or infinite weights.*model.w"),
        ("inf", "NaN or infinite weights"),
    ],
)
def test_broken_checkpoints_are_refused_with_a_clear_error(tmp_path, damage, message):
    path = saved_model(tmp_path, {"nan": torch.tensor([1.0, math.nan]), "inf": torch.tensor([math.inf])}.get(damage))
    data = open(path, "rb").read()
    if damage == "truncate":
        open(path, "wb").write(data[: len(data) // 2])
    elif damage == "empty":
        open(path, "wb").close()
    with pytest.raises(ValueError, match=message):
        experiment.load_checkpoint(path, "mappo", "matrix-climbing")


def test_an_algorithm_file_refuses_a_truncated_checkpoint(tmp_path):
    path = saved_model(tmp_path)
    open(path, "r+b").truncate(100)
    module, args = tiny_args("coma", checkpoint=path)
    with pytest.raises(ValueError, match="truncated"):
        module.train(args)


# ------------------------------------------------------------------------- CLI vocabulary
COMMON = [
    "exp_name", "seed", "torch_deterministic", "cuda", "track", "wandb_project_name", "wandb_entity", "env_id",
    "env_options", "total_timesteps", "capture_video", "save_model", "eval_episodes", "eval_interval",
    "checkpoint", "resume", "torch_threads",
]  # fmt: skip
# one gradient step per rollout (A2C, COMA) or per few transitions (MADDPG): 8 envs on batched envs too
FIXED_ENVS = ("ia2c", "maa2c", "coma", "maddpg", "ia2c_rnn", "maa2c_rnn")
PLUMBING = ["make_run_dir", "make_writer", "Training", "log_eval", "save_checkpoint", "load_checkpoint",
            "print_summary", "check_args", "Video", "main"]  # fmt: skip


def args_fields(algo: str) -> dict[str, tuple[str, str]]:
    """Each Args field of a file: (type, help text), read from the source like tyro does."""
    tree = ast.parse(open(os.path.join(ROOT, f"{algo}.py")).read())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Args").body
    fields = {}
    for node, doc in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
            fields[node.target.id] = (ast.unparse(node.annotation), doc.value.value)
    return fields


def test_the_nine_files_share_one_vocabulary():
    reference = args_fields("mappo")
    for algo in ALGOS:
        fields = args_fields(algo)
        for name in COMMON:
            assert fields.get(name) == reference[name], f"{algo}.py: --{name} differs from mappo.py's"
        assert "learning_rate" in fields or algo.startswith("hatrpo"), algo  # TRPO's actor step has no learning rate
        assert "critic_learning_rate" in fields or algo == "mat", algo  # MAT: one network, one optimizer
        for old in ("lr", "actor_lr", "critic_lr"):
            assert old not in fields, f"{algo}.py still has --{old.replace('_', '-')}"
        for name in ("num_iterations", "minibatch_size"):
            if name in fields:
                assert "filled in at runtime" in fields[name][1], (algo, name)
        assert "envs.ids()" in fields["env_id"][1]  # --help says where the ids are
        source = open(os.path.join(ROOT, f"{algo}.py")).read()
        for fn in PLUMBING:
            assert f"experiment.{fn}(" in source, f"{algo}.py does not call experiment.{fn}"


ROLLOUT_ALGOS = [a for a in ALGOS if a not in FIXED_ENVS]


@pytest.mark.parametrize("algo", ALGOS)
def test_num_envs_means_the_same_everywhere(algo):
    """--num-envs: the same help everywhere; unset (None), its default follows the env family (below)."""
    kind, doc = args_fields(algo)["num_envs"]
    assert doc.startswith("the number of parallel environments"), algo
    assert kind == ("int" if algo in FIXED_ENVS else "int | None"), algo


def test_batched_envs_are_the_jitted_backends():
    assert envs.batched("smax-3m") and envs.batched("smax-5m_vs_6m")
    assert envs.batched("mpe-spread") and envs.batched("mpe-spread", {"backend": "jax"})
    assert not envs.batched("mpe-spread", {"backend": "mpe2"})  # PettingZoo's python worlds: one env at a time
    assert envs.batched("lbf-8x8-2p-3f", {"backend": "jax"})  # LBF's jitted backend, not its default
    assert not any(envs.batched(i) for i in ("ant-2x4", "matrix-climbing", "lbf-8x8-2p-3f", "tsc-2x2"))
    with pytest.raises(ValueError, match="unknown env id 'smax-4m'. Valid ids: .*smax-3m"):
        envs.batched("smax-4m")


@pytest.mark.parametrize("algo", ROLLOUT_ALGOS)
def test_rollout_defaults_follow_the_env_family_and_keep_explicit_flags(algo, capsys):
    module = importlib.import_module(algo)
    plain, batched = module.ROLLOUT_DEFAULTS["plain"], module.ROLLOUT_DEFAULTS["batched"]
    assert plain.keys() == batched.keys() and "num_envs" in plain
    assert 64 <= batched["num_envs"] <= 256 and batched["num_envs"] > plain["num_envs"]
    for env_id, options, expected in (
        ("smax-3m", (), batched),
        ("mpe-spread", (), batched),
        ("mpe-spread", ("backend=mpe2",), plain),
        ("ant-2x4", (), plain),
    ):
        args = module.Args(env_id=env_id, env_options=options)
        experiment.resolve_rollout(args, module.ROLLOUT_DEFAULTS)
        assert {k: getattr(args, k) for k in expected} == expected, (env_id, options)
    assert "is batched: many envs unless --num-envs is given" in capsys.readouterr().out
    args = module.Args(env_id="smax-3m", num_envs=8, num_steps=7)  # explicit flags are kept, the rest filled in
    experiment.resolve_rollout(args, module.ROLLOUT_DEFAULTS)
    assert (args.num_envs, args.num_steps) == (8, 7)
    assert all(getattr(args, k) == v for k, v in batched.items() if k not in ("num_envs", "num_steps"))
    assert "rollout: --num-envs 8 --num-steps 7" in capsys.readouterr().out


@pytest.mark.parametrize("algo", ROLLOUT_ALGOS)
def test_train_resolves_the_rollout_defaults(algo, monkeypatch, capsys):
    """train() fills in the unset flags before it makes the env: here a toy game posing as a batched env."""
    monkeypatch.setattr(experiment, "batched", lambda env_id, options=None: True)
    module = importlib.import_module(algo)
    batched = module.ROLLOUT_DEFAULTS["batched"]
    one_batch = batched["num_envs"] * batched["num_steps"]
    args = module.Args(env_id="matrix-climbing", total_timesteps=one_batch, eval_interval=0, eval_episodes=2,
                       save_model=False)  # fmt: skip
    result = module.train(args)
    assert {k: getattr(args, k) for k in batched} == batched
    assert result["global_step"] == one_batch
    assert f"rollout: --num-envs {batched['num_envs']}" in capsys.readouterr().out


@pytest.mark.parametrize("algo", ALGOS)
def test_every_file_prints_the_same_lines(algo, capsys):
    module, args = tiny_args(algo, save_model=True)
    result = module.train(args)
    out = capsys.readouterr().out
    assert f"logging to {result['run_dir']}" in out
    assert f"eval at step {result['global_step']:,}: return {result['eval_return']:.3f} over 2 episodes" in out
    assert f"run dir:     {result['run_dir']}\nfinal eval:  return {result['eval_return']:.3f} over 2" in out
    assert f"model:       {result['model_path']}\nTensorBoard: tensorboard --logdir runs" in out


def test_progress_and_eval_lines_show_the_win_rate_where_there_is_one(capsys):
    assert experiment.format_eval(-1.5, 0.25, 10) == "return -1.500, win rate 0.25 over 10 episodes"
    assert experiment.format_eval(-1.5, math.nan, 10) == "return -1.500 over 10 episodes"
    training = experiment.Training("runs/x", 1000)  # not a terminal here: a line at every tenth
    training.update(100, [1.0, 2.0], [0.0, 1.0])
    training.update(150, [1.0], [])  # still in the second tenth: no line
    training.update(1000, [3.0], [])
    training.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "logging to runs/x (tensorboard --logdir runs)" and len(lines) == 3, lines
    assert lines[1].startswith("step 100/1,000 (10%)") and lines[1].endswith("return 1.500  win rate 0.50")
    assert lines[2].startswith("step 1,000/1,000 (100%)") and lines[2].endswith("return 3.000")


# ---------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"total_timesteps": -5}, "--total-timesteps -5 is below one iteration"),
        ({"total_timesteps": 10}, "--total-timesteps 10 is below one iteration"),
        ({"learning_rate": -1.0}, "--learning-rate must be positive"),
        ({"learning_rate": 0.0}, "--learning-rate must be positive"),
        ({"critic_learning_rate": -1e-3}, "--critic-learning-rate must be positive"),
        ({"num_iterations": 7}, "--num-iterations is filled in at runtime"),
    ],
)
def test_bad_arguments_fail_before_any_folder_is_made(algo, overrides, message):
    module, args = tiny_args(algo, **overrides)
    if not all(hasattr(args, k) for k in overrides):
        pytest.skip(f"{algo}.py has no {list(overrides)}")
    if algo == "maddpg" and "total_timesteps" in overrides:
        args.num_envs = 16  # one vector step is the iteration of an off-policy loop
    with pytest.raises(ValueError, match=message):
        module.train(args)
    assert not os.path.exists("runs")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_an_error():
    module, args = tiny_args("ippo", cuda=True)
    with pytest.raises(ValueError, match="--cuda was given, but torch finds no GPU"):
        module.train(args)


def test_track_without_wandb_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    _, args = tiny_args("mappo", track=True)
    with pytest.raises(ImportError, match="pip install wandb"):
        experiment.make_writer(args, experiment.make_run_dir("x", "y", 1))


# ------------------------------------------------------------------------------------ video
def test_video_is_an_mp4_at_the_envs_speed_and_does_not_change_the_evaluation(capsys):
    import imageio.v2 as imageio

    import mappo

    _, args = tiny_args("mappo", env_id="mpe-spread", eval_episodes=3)
    with envs.make("mpe-spread", num_envs=1) as probe:
        agent = mappo.Agent(probe, args)
    path = experiment.video_path("runs/x", 7)
    with_video, without = mappo.evaluate(agent, args, "cpu", path), mappo.evaluate(agent, args, "cpu", None)
    assert with_video[0] == without[0]  # the same return (mpe-spread has no win rate)
    assert f"video saved to {path}" in capsys.readouterr().out and path.endswith("videos/eval_7.mp4")
    reader = imageio.get_reader(path)
    assert reader.get_meta_data()["fps"] == pytest.approx(10.0)  # mpe2's render_fps, one frame per step
    assert reader.count_frames() == 25  # the first episode of env 0: 25 steps


@pytest.mark.parametrize("options", [{}, {"backend": "gymnasium-robotics"}, {"observation": "global"}])
def test_a_long_mujoco_episode_renders_every_kth_step_at_real_speed(options):
    import envs.mamujoco

    with envs.make("ant-2x4", num_envs=1, **options) as env:
        assert experiment.env_fps(env) == pytest.approx(20.0)  # 1 / dt = 1 / (5 x 0.01 s)
        video = experiment.Video(env, "unused.mp4")  # nothing is rendered until capture()
    assert envs.mamujoco.EPISODE_LIMIT / video.skip <= experiment.VIDEO_MAX_FRAMES
    assert video.fps == pytest.approx(20.0 / video.skip)  # one second of video = one second of the episode


def test_async_workers_leave_ctrl_c_to_the_main_process_and_a_dead_one_names_the_env(monkeypatch):
    import envs.tsc

    monkeypatch.setattr(envs.tsc, "NUM_SECONDS", 100)
    rng = np.random.default_rng(0)
    with envs.make("tsc-2x2", num_envs=2, seed=0) as env:
        batch = env.reset()
        os.kill(env.vec.processes[0].pid, signal.SIGINT)  # as the terminal's Ctrl-C: ignored by the workers
        batch, *_ = env.step(envs.random_actions(env, batch, rng))
        assert env.vec.processes[0].is_alive()
        env.vec.processes[1].kill()
        env.vec.processes[1].join()
        with pytest.raises(RuntimeError, match=r"tsc-2x2: a worker process died: env 1 \(exit code -9\) of 2"):
            env.step(envs.random_actions(env, batch, rng))


def test_coma_evaluates_a_checkpoint_with_video():
    module, args = tiny_args("coma", env_id="mpe-spread", eval_episodes=1)
    model_path = module.train(args)["model_path"]
    _, eval_args = tiny_args("coma", env_id="mpe-spread", eval_episodes=1, checkpoint=model_path, capture_video=True)
    result = module.train(eval_args)
    assert math.isfinite(result["eval_return"])
    assert os.path.isfile(os.path.join(os.path.dirname(model_path), "videos", "eval_checkpoint.mp4"))


class FakeWriter:
    def __init__(self):
        self.points, self.closed = {}, False

    def add_scalar(self, tag, value, step):
        self.points.setdefault(tag, []).append((step, value))

    def close(self):
        self.closed = True


def test_a_long_run_logs_each_training_curve_as_window_means_and_every_evaluation():
    w = experiment.ThinnedWriter(FakeWriter(), every=10)
    for value, step in [(1, 5), (2, 8), (4, 15)]:  # the first value is a point; 2 and 4 end a window at 15
        w.add_scalar("charts/episodic_return", value, step)
    w.add_scalar("eval/episodic_return", -1.0, 16)  # never thinned
    w.add_scalar("charts/episodic_return", 6, 18)
    experiment.log_eval(w, 20, 0.5, float("nan"), 2)  # writes the pending 6 at 18; the windows start at 20
    w.add_scalar("charts/episodic_return", 8, 25)  # 25 - 20 < 10: pending until the close
    w.close()
    assert w.writer.points["charts/episodic_return"] == [(5, 1.0), (15, 3.0), (18, 6.0), (25, 8.0)]
    assert w.writer.points["eval/episodic_return"] == [(16, -1.0), (20, 0.5)] and w.writer.closed
    # a run resumed from the save after the evaluation at 20 logs what the run left alone logged after it
    values = [(3, 22), (5, 27), (7, 31), (9, 44), (11, 45)]
    alone, resumed = experiment.ThinnedWriter(FakeWriter(), 10), experiment.ThinnedWriter(FakeWriter(), 10, since=20)
    alone.add_scalar("losses/value_loss", 0.0, 12)
    experiment.log_eval(alone, 20, 0.0, float("nan"), 2)
    for w in (alone, resumed):
        for value, step in values:
            w.add_scalar("losses/value_loss", value, step)
        w.close()
    after = [p for p in alone.writer.points["losses/value_loss"] if p[0] > 20]
    assert after == resumed.writer.points["losses/value_loss"] == [(31, 5.0), (44, 9.0), (45, 11.0)]
    # a short run (every < 2) logs every value as it comes
    short = experiment.ThinnedWriter(FakeWriter(), every=1)
    for step in (1, 2, 3):
        short.add_scalar("charts/SPS", step, step)
    assert short.writer.points["charts/SPS"] == [(1, 1), (2, 2), (3, 3)]
