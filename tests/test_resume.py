"""--resume: a run that was stopped (Ctrl-C, SIGTERM, a crash, the end of a session) continues from its
last save with its own flags, weights, optimizer states and random generators, in its own folder.

The check that matters: on a game whose episodes do not depend on the env's seed (the matrix games and
the product game: one step, a constant observation), a run killed after its last save and resumed
ends with exactly the weights, and logs exactly the curves, of the same run left alone.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import signal

import numpy as np
import pytest
import torch

from benchmark.plot import read_scalars
from envs import experiment
from tests.conftest import ALGOS

# per file: a few iterations of 64-200 env steps on a game whose episodes ignore the env's seed
RUNS = {
    "mappo": dict(env_id="matrix-climbing", num_envs=8, num_steps=25, update_epochs=2),
    "happo": dict(env_id="matrix-climbing", num_envs=8, num_steps=25, update_epochs=2, critic_epochs=2),
    "hatrpo": dict(env_id="matrix-climbing", num_envs=8, num_steps=25, critic_epochs=2),
    # MAT with a new agent order drawn for every rollout; MAT-Dec (mat.py --dec): per-agent actors, no order
    "mat": dict(env_id="matrix-climbing", num_envs=8, num_steps=25, update_epochs=2, shuffle_agent_order=True),
    "mat-dec": dict(env_id="matrix-climbing", num_envs=8, num_steps=25, update_epochs=2, dec=True),
    # the recurrent files: --num-steps a multiple of --chunk-length (10), or no chunks (A2C)
    "mappo_rnn": dict(env_id="matrix-climbing", num_envs=8, num_steps=10, update_epochs=2),
    "ippo_rnn": dict(env_id="matrix-climbing", num_envs=8, num_steps=10, update_epochs=2),
    "happo_rnn": dict(env_id="matrix-climbing", num_envs=8, num_steps=10, update_epochs=2, critic_epochs=2),
    "hatrpo_rnn": dict(env_id="matrix-climbing", num_envs=8, num_steps=10, critic_epochs=2),
    "ia2c_rnn": dict(env_id="matrix-climbing", num_envs=8, num_steps=25),
    "maa2c_rnn": dict(env_id="matrix-climbing", num_envs=8, num_steps=25),
    "ippo": dict(env_id="matrix-climbing", num_envs=8, num_steps=25, update_epochs=2),
    "ia2c": dict(env_id="matrix-climbing", num_envs=8, num_steps=25),
    "maa2c": dict(env_id="matrix-climbing", num_envs=8, num_steps=25),
    # hard target updates at the 3rd and 6th critic updates: before and after the save resumed from
    "coma": dict(env_id="matrix-climbing", num_envs=8, num_steps=25, critic_updates=2, target_update_interval=3),
    # no num_steps: an iteration is one step of the 8 envs (args_of counts 1); updates from the 2nd iteration on;
    # a buffer of 32 rows (also when a resume asks for more steps), half full at the save resumed from; the twin
    # critics and the reward statistics are state to restore too
    "maddpg": dict(env_id="product-game", num_envs=8, learning_starts=8, batch_size=8, buffer_size=32,
                   twin_critics=True, standardise_rewards=True),
}  # fmt: skip
# the loss curve compared, where it is not losses/value_loss; maddpg's none: it logs its losses at most once a
# second of wall time, so that two runs left alone differ as well (its weights and its episodes are compared)
LOSS_TAG = {"coma": "losses/critic_loss", "maddpg": None}
ITERATIONS = 4  # the runs below: 4 iterations, an evaluation (and a save) after each


def args_of(algo: str, **overrides):
    module = importlib.import_module(algo.split("-")[0])  # "mat-dec": mat.py with the RUNS entry's flags
    values = dict(seed=1, eval_episodes=2, **RUNS[algo], **overrides)
    one = values.get("num_envs", 1) * values.get("num_steps", 1)
    return module, module.Args(total_timesteps=ITERATIONS * one, eval_interval=one, **values)


def weights(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same(a, b, where: str) -> None:
    """Bit-identical nested dicts / lists / tensors / arrays / numbers."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    return tmp_path


@pytest.mark.parametrize("algo", list(RUNS))
def test_a_killed_run_resumed_ends_as_the_run_left_alone(algo, in_tmp_dir, monkeypatch):
    module, args = args_of(algo)
    alone = module.train(dataclasses.replace(args))

    # the same run, killed after its 3rd iteration had been logged but before it was saved: only the
    # saves after the first two iterations reach the disk
    saves, real_save = [], experiment.save_checkpoint
    monkeypatch.setattr(experiment, "save_checkpoint", lambda path, payload: saves.append(path) or (
        real_save(path, payload) if len(saves) <= 2 else path))  # fmt: skip
    killed = module.train(dataclasses.replace(args, exp_name=f"{algo}-killed"))
    monkeypatch.setattr(experiment, "save_checkpoint", real_save)
    saved = torch.load(killed["model_path"], weights_only=False)["training"]
    assert saved["global_step"] == alone["global_step"] // 2

    _, fresh = args_of(algo)  # what a user types: --resume and nothing else
    resumed = module.train(dataclasses.replace(fresh, resume=killed["model_path"]))
    assert resumed["run_dir"] == killed["run_dir"] and resumed["global_step"] == alone["global_step"]
    for name, tensor in weights(alone["model_path"]).items():
        torch.testing.assert_close(weights(resumed["model_path"])[name], tensor, rtol=0, atol=0, msg=name)
    # and the training state: optimizers, generators, counters, each file's own (target networks, replay buffer...)
    training = [torch.load(run["model_path"], weights_only=False)["training"] for run in (resumed, alone)]
    assert_same(*training, "training")
    # the curves: each step once (what the killed run logged after its last save is dropped), as the run alone
    for tag in (LOSS_TAG.get(algo, "losses/value_loss"), "charts/episodic_return", "eval/episodic_return"):
        if tag is not None:
            assert read_scalars(alone["run_dir"], tag), tag  # logged: the comparison is not of two empty curves
            assert read_scalars(resumed["run_dir"], tag) == read_scalars(alone["run_dir"], tag), tag


def test_a_killed_run_with_thinned_curves_resumed_ends_as_the_run_left_alone(in_tmp_dir, monkeypatch):
    # curves of about 3 points per run (envs/experiment.py ThinnedWriter): the windows restart at each save
    monkeypatch.setattr(experiment, "LOG_POINTS", 3)
    test_a_killed_run_resumed_ends_as_the_run_left_alone("mappo", in_tmp_dir, monkeypatch)
    (alone,) = [d for d in os.listdir(in_tmp_dir / "runs") if d.startswith("matrix-climbing__mappo__")]
    # 25 steps of one-step episodes per iteration, 4 iterations: a point each without thinning; here the first
    # episode's, then one mean per iteration (written before each evaluation)
    assert len(read_scalars(str(in_tmp_dir / "runs" / alone), "charts/episodic_return")) == 1 + ITERATIONS


@pytest.mark.parametrize("algo", ["coma", "maddpg"])
def test_a_resume_saves_the_state_it_loaded(algo, in_tmp_dir):
    # state that a one-step game never reads (it bootstraps nothing), e.g. coma's target critic: a resume that
    # adds no whole iteration (these files round the iterations down) saves exactly what it restored
    module, args = args_of(algo)
    first = module.train(args)
    saved = torch.load(first["model_path"], weights_only=False)
    again = module.train(module.Args(resume=first["model_path"], total_timesteps=first["global_step"] + 1))
    assert again["model_path"] == first["model_path"] and again["global_step"] == first["global_step"]
    resaved = torch.load(again["model_path"], weights_only=False)
    for ckpt in (saved, resaved):  # the flags that differ; maddpg's --batch-size (a flag there) is the run's
        del ckpt["args"]["total_timesteps"], ckpt["args"]["resume"]
    assert_same(resaved, saved, "checkpoint")


def test_resume_keeps_the_runs_flags_and_refuses_a_changed_one(in_tmp_dir):
    module, args = args_of("mappo")
    first = module.train(args)
    with pytest.raises(ValueError, match=r"--gamma 0.9 \(the run's: 0.99\).*start a new run"):
        module.train(dataclasses.replace(args_of("mappo")[1], resume=first["model_path"], gamma=0.9))
    with pytest.raises(ValueError, match="already trained 800 of its --total-timesteps 800; pass a larger"):
        module.train(dataclasses.replace(args_of("mappo")[1], resume=first["model_path"]))
    with pytest.raises(ValueError, match=r"--env-id matrix-penalty \(the run's: matrix-climbing\)"):
        module.train(module.Args(env_id="matrix-penalty", resume=first["model_path"], total_timesteps=10**4))
    longer = module.train(module.Args(resume=first["model_path"], total_timesteps=1200))  # a larger budget
    assert longer["run_dir"] == first["run_dir"] and longer["global_step"] == 1200


def test_resume_refuses_a_model_without_training_state_and_another_files_model(in_tmp_dir):
    module, args = args_of("mappo")
    path = module.train(args)["model_path"]
    ckpt = torch.load(path, weights_only=False)
    old = experiment.save_checkpoint(str(in_tmp_dir / "old.pt"), {k: v for k, v in ckpt.items() if k != "training"})
    with pytest.raises(ValueError, match="no training state.*evaluated with --checkpoint, not resumed"):
        module.train(module.Args(resume=old))
    other = experiment.save_checkpoint(str(in_tmp_dir / "other.pt"), {**ckpt, "algo": "ippo"})
    with pytest.raises(ValueError, match="saved by ippo.py"):
        module.train(module.Args(resume=other))
    with pytest.raises(ValueError, match="does not exist"):
        module.train(module.Args(resume=str(in_tmp_dir / "missing.pt")))


def test_sigterm_stops_a_run_as_ctrl_c_does(in_tmp_dir):
    training = experiment.Training(str(in_tmp_dir), 100)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert training.interrupted
    finally:
        training.close()
    assert signal.getsignal(signal.SIGTERM) is not training._on_sigterm


def test_maddpg_replay_buffer_state_wrapped_and_resized():
    from maddpg import ReplayBuffer

    full = ReplayBuffer(5, {"x": ()}, {}, seed=0)
    full.add(x=np.arange(7.0))  # wrapped: rows [5, 6, 2, 3, 4], the next write at row 2
    full.sample(3, "cpu")
    same = ReplayBuffer(5, {"x": ()}, {}, seed=1)
    same.load_state_dict(full.state_dict())
    assert same.pos == 2 and same.size == 5 and np.array_equal(same.data["x"], full.data["x"])
    assert np.array_equal(same.sample(4, "cpu")["x"], full.sample(4, "cpu")["x"])  # the sampler continues
    larger = ReplayBuffer(8, {"x": ()}, {}, seed=1)  # a resume with a larger --total-timesteps: oldest first
    larger.load_state_dict(full.state_dict())
    assert larger.pos == 5 and larger.size == 5 and larger.data["x"].tolist() == [2, 3, 4, 5, 6, 0, 0, 0]


def test_every_file_can_resume():
    assert {a.split("-")[0] for a in RUNS} == set(ALGOS), f"no --resume test for {sorted(set(ALGOS) - set(RUNS))}"
