"""Run algorithms x env ids x seeds, each as its own process, writing into runs/.

    python benchmark/run.py --experiment param-sharing --seeds 1 2 3 --workers 2
    python benchmark/run.py --algos mappo ippo --env-ids mpe-spread --seeds 1 2 3 --extra="--total-timesteps 200000"
    python benchmark/run.py --experiment mamujoco --dry-run      # only print the commands

`--experiment param-sharing` prints exactly the commands behind the README's parameter-sharing
table and figures (with their budgets); the other experiments are the algorithm x env grids of the
lecture's figures, with the budget set by `--extra` (the README and docs/benchmarks.md give, beside
each figure, the exact commands that made it). `--extra` arguments are appended to every command.
Then `python benchmark/plot.py` draws the curves and tables from runs/.

Each run gets cpu_count // workers threads for torch and XLA (OMP_NUM_THREADS and XLA_FLAGS,
unless already set): two runs that each spin up one thread per core on a 2-core machine were
measured about 25x slower than two single-threaded runs (README, Troubleshooting).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the budgets of the README's parameter-sharing figures (`--extra` comes after them, so it can override them)
PARAM_SHARING_BUDGETS = {
    "smax-3m": ["--total-timesteps", "500000"],
    "smax-2s3z": ["--total-timesteps", "1000000"],
    "mpe-spread": ["--total-timesteps", "150000", "--eval-interval", "25000"],
    "halfcheetah-6x1": ["--total-timesteps", "1000000", "--eval-interval", "100000"],
    "tsc-cologne8": ["--total-timesteps", "200000", "--eval-interval", "50000", "--eval-episodes", "2"],
}

# experiment -> list of (algorithm file, env id, extra arguments)
EXPERIMENTS: dict[str, list[tuple[str, str, list[str]]]] = {
    # the lecture's MAPPO vs MAPPO-Ind table: parameter sharing on and off
    "param-sharing": [
        (algo, env_id, [*flags, *budget])
        for env_id, budget in PARAM_SHARING_BUDGETS.items()
        for algo, flags in [("mappo", ["--share-params"]), ("mappo", ["--no-share-params", "--exp-name", "mappo-ind"])]
    ],
    # the lecture's Multi-Agent MuJoCo figure
    "mamujoco": [
        (algo, env_id, [])
        for env_id in ["ant-2x4", "halfcheetah-6x1", "walker-2x3"]
        for algo in ["happo", "hatrpo", "mappo", "ippo", "maddpg", "mat"]
    ],
    # SMAX win rates
    "smax": [
        (algo, env_id, [])
        for env_id in ["smax-3m", "smax-2s3z", "smax-5m_vs_6m"]
        for algo in ["mappo", "ippo", "happo", "mat"]
    ],
    # traffic: every discrete-capable algorithm
    "traffic": [
        (algo, env_id, [])
        for env_id in ["tsc-2x2", "tsc-4x4"]
        for algo in ["ia2c", "ippo", "maa2c", "mappo", "coma", "maddpg", "happo", "hatrpo", "mat"]
    ],
}


def commands(args: Args) -> list[list[str]]:
    if args.experiment:
        if args.experiment not in EXPERIMENTS:
            raise SystemExit(f"unknown experiment {args.experiment!r}; choose from {', '.join(EXPERIMENTS)}")
        plan = EXPERIMENTS[args.experiment]
    else:
        if not args.algos or not args.env_ids:
            raise SystemExit("give --experiment NAME, or --algos and --env-ids")
        plan = [(a, e, []) for e in args.env_ids for a in args.algos]
    return [
        [sys.executable, f"{algo}.py", "--env-id", env_id, "--seed", str(seed), *flags, *shlex.split(args.extra)]
        for algo, env_id, flags in plan
        for seed in args.seeds
    ]


def thread_env(workers: int) -> dict[str, str]:
    """The environment of each run: its share of the cores for torch (OpenMP) and XLA (SMAX)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    if threads == 1:
        env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    return env


def machine() -> str:
    """Besides the seed, what decides a run's last digits: torch's version and the CPU kernels it picked
    (README, Troubleshooting, "Your numbers differ from ours")."""
    import torch

    return f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores"


def run(cmd: list[str], log_dir: str, env: dict[str, str]) -> int:
    name = "_".join(p.strip("-").replace("/", "_") for p in cmd[1:])[:200]  # the whole command: unique
    with open(os.path.join(log_dir, f"{name}.log"), "w") as log:
        log.write(f"# {shlex.join(cmd[1:])}\n# {machine()}\n")
        log.flush()  # before the run's own output
        start = time.time()
        code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    print(f"[{'ok' if code == 0 else f'exit {code}'}] {time.time() - start:6.0f}s  {shlex.join(cmd[1:])}", flush=True)
    return code


@dataclass
class Args:
    experiment: str = ""
    """a named experiment (param-sharing, mamujoco, smax, traffic)"""
    algos: list[str] = field(default_factory=list)
    """algorithm files without .py (instead of --experiment)"""
    env_ids: list[str] = field(default_factory=list)
    """env ids (instead of --experiment)"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds, one run each"""
    extra: str = ""
    """arguments appended to every command, as one string: --extra="--total-timesteps 200000 --dec" """
    workers: int = 1
    """runs at the same time"""
    dry_run: bool = False
    """only print the commands"""


if __name__ == "__main__":
    args = tyro.cli(Args)
    cmds = commands(args)
    if args.dry_run:
        print("\n".join(shlex.join(c[1:]) for c in cmds))
        raise SystemExit(0)
    log_dir = os.path.join(ROOT, "runs", "logs")
    os.makedirs(log_dir, exist_ok=True)
    env = thread_env(args.workers)
    with ThreadPoolExecutor(args.workers) as pool:
        codes = list(pool.map(lambda c: run(c, log_dir, env), cmds))
    raise SystemExit(max(codes, default=0))
