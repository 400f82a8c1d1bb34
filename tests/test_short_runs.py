"""A short run of every algorithm on one id of every env family it supports: it trains a few
hundred steps, logs to TensorBoard, saves, and the saved model reloads and evaluates through
`--checkpoint`. Bad checkpoints and unsupported action spaces are refused with clear errors."""

from __future__ import annotations

import dataclasses
import importlib
import math
import os

import pytest
import torch

import envs.mamujoco
import envs.tsc
from tests.conftest import ALGOS  # the algorithm files

DISCRETE_ONLY = {"coma"}

# per algorithm: overrides that make a run a few hundred steps long and quick
TINY = {
    "ia2c": dict(num_steps=5),
    "ippo": dict(num_steps=16, update_epochs=1, num_minibatches=1),
    "maa2c": dict(num_steps=5),
    "mappo": dict(num_steps=16, update_epochs=1, num_minibatches=1),
    "happo": dict(num_steps=16, update_epochs=1, num_minibatches=1),
    "hatrpo": dict(num_steps=16),
    "mat": dict(num_steps=16, update_epochs=1, num_minibatches=1),
    "coma": dict(num_steps=16),
    "maddpg": dict(learning_starts=32, batch_size=16),
    "mappo_rnn": dict(num_steps=16, chunk_length=8, update_epochs=1, num_minibatches=2),
    "ippo_rnn": dict(num_steps=16, chunk_length=8, update_epochs=1, num_minibatches=2),
    "happo_rnn": dict(num_steps=16, chunk_length=8, update_epochs=1, num_minibatches=2),
    "hatrpo_rnn": dict(num_steps=16, chunk_length=8, critic_num_minibatches=2),
    "ia2c_rnn": dict(num_steps=5),
    "maa2c_rnn": dict(num_steps=5),
}
TOTAL = {"default": 128, "tsc-2x2": 64}  # env steps of a short run

# (env id, extra overrides): one id per family, heterogeneous agents without sharing
CASES = [
    ("matrix-climbing", {}),
    ("product-game", {}),
    ("ant-2x4", {}),
    ("halfcheetah-6x1", {"share_params": False}),
    ("mpe-spread", {}),
    ("mpe-speaker-listener-continuous", {"share_params": False}),
    ("tsc-2x2", {}),
    ("smax-3m", {}),
    ("lbf-8x8-2p-2f-coop", {}),
    ("rware-tiny-2ag", {"env_options": ("episode_limit=50",)}),
]
CONTINUOUS = {"product-game", "ant-2x4", "halfcheetah-6x1", "mpe-speaker-listener-continuous"}


def make_args(algo: str, env_id: str, **overrides):
    module = importlib.import_module(algo)
    fields = {f.name for f in dataclasses.fields(module.Args)}
    values = dict(
        env_id=env_id,
        total_timesteps=TOTAL.get(env_id, TOTAL["default"]),
        num_envs=2,
        eval_episodes=2,
        eval_interval=0,
        save_model=True,
        **TINY[algo],
    )
    values.update(overrides)
    # share_params is only a switch where the algorithm has both modes (not in MAT)
    return module, module.Args(**{k: v for k, v in values.items() if k in fields})


def cases_for(algo: str):
    for env_id, overrides in CASES:
        if algo in DISCRETE_ONLY and env_id in CONTINUOUS:
            continue
        yield pytest.param(algo, env_id, overrides, id=f"{algo}-{env_id}")


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    # short episodes, so that the evaluations of a short run stay short
    monkeypatch.setattr(envs.mamujoco, "EPISODE_LIMIT", 50)
    monkeypatch.setattr(envs.tsc, "NUM_SECONDS", 100)


@pytest.mark.parametrize("algo,env_id,overrides", [c for a in ALGOS for c in cases_for(a)])
def test_short_run_saves_and_reloads(algo, env_id, overrides):
    module, args = make_args(algo, env_id, **overrides)
    result = module.train(args)
    assert result["global_step"] >= args.total_timesteps
    assert math.isfinite(result["eval_return"])
    events = [f for f in os.listdir(result["run_dir"]) if f.startswith("events.out.tfevents")]
    assert events, "no TensorBoard event file written"
    assert os.path.isfile(result["model_path"])

    _, eval_args = make_args(algo, env_id, checkpoint=result["model_path"], **overrides)
    reloaded = module.train(eval_args)
    assert reloaded["global_step"] == 0
    assert math.isfinite(reloaded["eval_return"])


@pytest.mark.parametrize(
    "algo,env_id,overrides",
    [
        ("happo", "ant-2x4", {"state_type": "FP"}),
        ("happo", "smax-3m", {"state_type": "FP", "hidden_norm": False}),
        ("hatrpo", "ant-2x4", {"state_type": "FP"}),
        ("hatrpo", "smax-3m", {"state_type": "FP"}),
        ("happo_rnn", "ant-2x4", {"state_type": "FP"}),
        ("happo_rnn", "smax-3m", {"state_type": "FP", "share_params": True}),
        ("hatrpo_rnn", "ant-2x4", {"state_type": "FP", "rnn_hidden_dim": 16}),  # one critic hidden state per agent
        ("hatrpo_rnn", "smax-3m", {"state_type": "FP", "share_params": True}),
    ],
)  # ant-2x4: truncation at 50 steps; smax-3m: dead agents
def test_happo_hatrpo_architecture_options_run_and_their_checkpoints_reload(algo, env_id, overrides):
    module, args = make_args(algo, env_id, **overrides)
    result = module.train(args)
    assert result["global_step"] >= args.total_timesteps and math.isfinite(result["eval_return"])
    _, eval_args = make_args(algo, env_id, checkpoint=result["model_path"])  # the options come from the checkpoint
    assert module.train(eval_args)["global_step"] == 0


@pytest.mark.parametrize("algo", ALGOS)
def test_evaluations_during_and_after_training_are_logged_once_per_step(algo):
    from benchmark.plot import read_scalars

    module, args = make_args(algo, "matrix-climbing", eval_interval=64, save_model=False)  # 64 and 128 = the end
    result = module.train(args)
    steps = [step for step, _ in read_scalars(result["run_dir"], "eval/episodic_return")]
    assert len(steps) >= 2, steps  # at least one evaluation during training, and the final one
    assert steps == sorted(set(steps)), f"an env step evaluated twice: {steps}"
    assert steps[-1] == result["global_step"]


@pytest.mark.parametrize("algo", ALGOS)
def test_checkpoint_of_another_env_or_algorithm_is_refused(algo):
    module, args = make_args(algo, "matrix-climbing")
    path = module.train(args)["model_path"]
    _, other_env = make_args(algo, "matrix-penalty", checkpoint=path)
    with pytest.raises(ValueError, match="matrix-climbing"):
        module.train(other_env)
    other = "mappo" if algo != "mappo" else "ippo"
    other_module, other_args = make_args(other, "matrix-climbing", checkpoint=path)
    with pytest.raises(ValueError, match=f"{algo}.py"):
        other_module.train(other_args)


@pytest.mark.parametrize("algo", ALGOS)
def test_missing_checkpoint_file_is_refused(algo):
    module, args = make_args(algo, "matrix-climbing", checkpoint="no/such/model.pt")
    with pytest.raises((ValueError, FileNotFoundError), match="no/such/model.pt"):
        module.train(args)


def test_coma_refuses_continuous_actions():
    module, args = make_args("coma", "product-game")
    with pytest.raises(ValueError, match="continuous.*(mappo|maddpg)"):
        module.train(args)


@pytest.mark.parametrize("algo", ["mappo", "mat"])
def test_video_of_mpe_evaluation(algo):
    module, args = make_args(algo, "mpe-spread", capture_video=True, eval_episodes=1)
    result = module.train(args)
    videos = os.path.join(result["run_dir"], "videos")
    assert any(f.endswith(".mp4") for f in os.listdir(videos))
