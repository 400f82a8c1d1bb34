"""The lecture's product game: sequential (HAPPO, HATRPO) against simultaneous (MAPPO, IPPO) updates.

    python benchmark/product_game.py --seeds 1 2 3 4 5

Two agents pick a1, a2 in [-2, 2] and share the reward a1 * a2 (optimum 4). The Gaussian
policies start at means -0.25 (agent 1) and 0.25 (agent 2), so the joint return starts at
about -0.06. Each agent's own improvement direction points towards the other agent's sign:
updated simultaneously (MAPPO, IPPO) agent 1 moves up while agent 2 moves down and the joint
outcome can get worse; updated one after the other (HAPPO, HATRPO), the second agent sees
the first one's new policy through the factor M and follows it.

Every algorithm runs through its own `train(Args(...))` with the same rollout (num_envs x
num_steps one-step episodes per iteration), without parameter sharing, the same initial
std (log_std_init 0, where the file has that option) and the same actor learning rate for
the PPO-style files; a field that a file's Args lacks is left out (so a file without an
`init_mean` option starts from its own initialisation: the script says so). The figure
(benchmark/figures/product_game.png) shows, per iteration, mean and min-max over seeds of
the greedy joint return clip(mu1) * clip(mu2) (eval/episodic_return, evaluated after every
iteration) and of the training return (charts/episodic_return, the last 20 sampled episodes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmark.plot import read_scalars  # noqa: E402


@dataclass
class Args:
    algos: list[str] = field(default_factory=lambda: ["happo", "hatrpo", "mappo", "ippo"])
    """algorithm files (without .py) to compare"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """seeds of each algorithm"""
    init_mean: tuple[float, ...] = (-0.25, 0.25)
    """the initial means of the two Gaussian policies (the lecture's)"""
    iterations: int = 60
    """training iterations (policy updates) per run"""
    num_envs: int = 100
    """one-step episodes per rollout step"""
    num_steps: int = 2
    """rollout steps per iteration"""
    learning_rate: float = 0.01
    """actor learning rate of the PPO-style files (HARL's 5e-4 needs thousands of iterations here)"""
    kl_threshold: float = 0.01
    """HATRPO's KL bound delta"""
    out: str = os.path.join(ROOT, "benchmark", "figures", "product_game.png")
    """where the figure goes"""


def run(algo: str, seed: int, args: Args, tmp: str) -> dict[str, list[tuple]]:
    """Train one algorithm once; its per-iteration eval and training returns."""
    module = importlib.import_module(algo)
    names = {f.name for f in dataclasses.fields(module.Args)}
    batch = args.num_envs * args.num_steps
    wanted = dict(
        env_id="product-game", seed=seed, total_timesteps=args.iterations * batch, num_envs=args.num_envs,
        num_steps=args.num_steps, share_params=False, save_model=False, eval_interval=batch, eval_episodes=8,
        init_mean=tuple(args.init_mean), log_std_init=0.0, learning_rate=args.learning_rate,
        kl_threshold=args.kl_threshold,
    )  # fmt: skip
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = module.train(module.Args(**{k: v for k, v in wanted.items() if k in names}))
        return {tag: read_scalars(result["run_dir"], tag) for tag in ("eval/episodic_return", "charts/episodic_return")}
    finally:
        os.chdir(cwd)


def main(args: Args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = args.num_envs * args.num_steps
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos:
            if not os.path.isfile(os.path.join(ROOT, f"{algo}.py")):
                print(f"{algo}.py does not exist (yet): skipped")
                continue
            module = importlib.import_module(algo)
            label = algo
            if "init_mean" not in {f.name for f in dataclasses.fields(module.Args)}:
                print(f"{algo}.py has no init_mean option: it starts from its own initialisation, not {args.init_mean}")
                label += " (own init)"
            curves = {tag: [] for tag in ("eval/episodic_return", "charts/episodic_return")}
            for seed in args.seeds:
                for tag, points in run(algo, seed, args, tmp).items():
                    curves[tag].append(points)
                final = curves["eval/episodic_return"][-1][-1][1]
                print(f"{algo} seed {seed}: final greedy joint return {final:.3f}", flush=True)
            for ax, tag in zip(axes, curves):
                n = min(len(c) for c in curves[tag])
                steps = np.array([s for s, _ in curves[tag][0][:n]]) / batch  # iteration index
                values = np.array([[v for _, v in c[:n]] for c in curves[tag]])
                (line,) = ax.plot(steps, values.mean(0), label=label)
                ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2, color=line.get_color())
    for ax, title in zip(axes, ("greedy joint return clip(mu1) clip(mu2)", "training return (sampled actions)")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.axhline(4.0, color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"joint return (mean, min-max over {len(args.seeds)} seeds)")
    axes[0].legend()
    fig.suptitle(f"product game r = a1 a2 from means {tuple(args.init_mean)}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"figure written to {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
