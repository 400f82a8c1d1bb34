"""`pytest --cuda` runs every test that trains with `cuda=True` (on a machine with a GPU)."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

ALGOS = ["ia2c", "ippo", "maa2c", "mappo", "maddpg", "coma", "happo", "hatrpo", "mat"]
ALGOS += ["mappo_rnn", "ippo_rnn", "happo_rnn", "hatrpo_rnn", "ia2c_rnn", "maa2c_rnn"]  # recurrent variants (issue 48)


def pytest_addoption(parser):
    parser.addoption("--cuda", action="store_true", help="train every algorithm on the GPU (needs CUDA)")


@pytest.fixture(autouse=True)
def train_on_cuda(request, monkeypatch):
    if not request.config.getoption("--cuda"):
        return
    if not torch.cuda.is_available():
        pytest.fail("--cuda was given but torch.cuda.is_available() is False")
    for name in ALGOS:
        module = importlib.import_module(name)

        def train_with_cuda(args, _train=module.train):
            torch.cuda.reset_peak_memory_stats()
            result = _train(dataclasses.replace(args, cuda=True))
            # the networks and the batches really lived on the GPU
            assert torch.cuda.max_memory_allocated() > 0
            return result

        monkeypatch.setattr(module, "train", train_with_cuda)
