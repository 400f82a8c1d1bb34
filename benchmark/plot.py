"""Learning curves and result tables from the TensorBoard event files under runs/.

    python benchmark/plot.py --runs-dir runs --out-dir benchmark/figures
    python benchmark/plot.py --tag eval/episodic_return --env-ids mpe-spread --x wall

Run folders are named `{env_id}__{exp_name}__{seed}__{time}` (every algorithm file does so);
runs with the same env id and exp_name are seeds of one experiment. For each env id: one PNG
with the mean over seeds and a shaded min-max band (x = env steps, or wall-clock time with
--x wall, written with a `__wall` suffix), and one markdown table: final value mean ± std over
seeds (mean of each run's last 10% of points), the maximum and the mean over training of each run's
smoothed curve (the EPyMARL paper's two metrics; mean ± std over seeds), seeds, steps, wall time. --smooth k: a running
mean over k logged points; --smooth-steps s: a running mean over the points of the last s env
steps, which treats files that log every episode and files that log once per iteration alike.
--published NAME=VALUE[@STEPS]: a paper's final value as a dashed line (in the colour of experiment
NAME where there is one), with a marker at the paper's budget STEPS, e.g.

    python benchmark/plot.py --env-ids smax-3s5z --tag eval/win_rate --published mat=1.0@3e6 mappo=0.725@3e6
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import tyro


def read_scalars(run_dir: str, tag: str, with_wall_time: bool = False) -> list[tuple]:
    """[(step, value)] (or [(step, value, seconds since the run started)]) of one scalar tag in a run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    events = acc.Scalars(tag)
    if with_wall_time:
        start = acc.FirstEventTimestamp()  # the writer's first event, when training began
        return [(e.step, e.value, e.wall_time - start) for e in events]
    return [(e.step, e.value) for e in events]


def collect(runs_dir: str, tag: str, env_ids: list[str] | None, exp_names: list[str] | None) -> dict:
    """{env_id: {exp_name: [array (n, 3) of step, value, seconds since start] per seed]}}"""
    found: dict = defaultdict(lambda: defaultdict(list))
    for name in sorted(os.listdir(runs_dir)):
        parts = name.split("__")
        if len(parts) != 4:
            continue
        env_id, exp_name = parts[0], parts[1]
        if (env_ids and env_id not in env_ids) or (exp_names and exp_name not in exp_names):
            continue
        points = read_scalars(os.path.join(runs_dir, name), tag, with_wall_time=True)
        if points:
            found[env_id][exp_name].append(np.array(points, dtype=np.float64))
    return found


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over the last `window` points (fewer at the start)."""
    if window <= 1:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.maximum(np.arange(1, len(values) + 1) - window, 0)]) / counts


def smoothed_over_steps(steps: np.ndarray, values: np.ndarray, span: float) -> np.ndarray:
    """Running mean over the points logged in the last `span` env steps (step - span, step]."""
    if span <= 0:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    first = np.searchsorted(steps, steps - span, side="right")  # first point inside the window
    last = np.arange(1, len(values) + 1)
    return (sums[last] - sums[first]) / (last - first)


def mean_curve(curves: list[np.ndarray], x_col: int, n: int = 100, window: int = 1, span: float = 0) -> tuple:
    """Interpolate every seed's (smoothed) curve on a common grid over the x range that every run covers
    (from the latest first point: an evaluation curve starts at its first evaluation, not at step 0)."""
    start, end = max(c[0, x_col] for c in curves), min(c[-1, x_col] for c in curves)
    grid = np.linspace(start, end, n)
    ys = np.stack(
        [np.interp(grid, c[:, x_col], smoothed_over_steps(c[:, 0], smoothed(c[:, 1], window), span)) for c in curves]
    )
    return grid, ys.mean(0), ys.min(0), ys.max(0)


def final_value(curve: np.ndarray) -> float:
    k = max(1, len(curve) // 10)
    return float(curve[-k:, 1].mean())


def parse_published(pairs: list[str]) -> list[tuple[str, float, float | None]]:
    """--published NAME=VALUE[@STEPS] ... as [(name, value, steps or None)]."""
    marks = []
    for pair in pairs:
        name, sep, rest = pair.partition("=")
        value, at, steps = rest.partition("@")
        try:
            if not (sep and name):
                raise ValueError
            marks.append((name, float(value), float(steps) if at else None))
        except ValueError:
            raise SystemExit(
                f"--published {pair!r}: write NAME=VALUE or NAME=VALUE@STEPS, in the plotted scalar's units"
                " (e.g. mat=1.0@3e6 for a 100% win rate at 3e6 env steps)"
            ) from None
    return marks


def table(env_id: str, experiments: dict, tag: str, window: int = 1, span: float = 0) -> str:
    """Per experiment, mean ± std over seeds of each run's final value (its last 10% of points), and of the
    maximum and the mean over training of its curve, smoothed as plotted (the EPyMARL paper's two metrics)."""
    lines = [
        f"| {env_id} | {tag} (final, mean ± std) | max over training | mean over training | seeds | env steps "
        "| wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for exp_name, curves in sorted(experiments.items()):
        finals = [final_value(c) for c in curves]
        trained = [smoothed_over_steps(c[:, 0], smoothed(c[:, 1], window), span) for c in curves]
        steps = int(np.median([c[-1, 0] for c in curves]))
        wall = np.median([c[-1, 2] for c in curves]) / 60
        cells = [
            f"{np.mean(x):.2f} ± {np.std(x):.2f}"
            for x in (finals, [v.max() for v in trained], [v.mean() for v in trained])
        ]
        lines.append(f"| {exp_name} | {' | '.join(cells)} | {len(curves)} | {steps:,} | {wall:.0f} min |")
    return "\n".join(lines)


@dataclass
class Args:
    runs_dir: str = "runs"
    """folder holding the run folders"""
    out_dir: str = "benchmark/figures"
    """where PNGs and markdown tables are written"""
    tag: str = "charts/episodic_return"
    """scalar to plot (e.g. eval/episodic_return, charts/win_rate, charts/waiting_time)"""
    env_ids: list[str] = field(default_factory=list)
    """only these env ids (default: all found)"""
    exp_names: list[str] = field(default_factory=list)
    """only these experiments (default: all found)"""
    x: str = "steps"
    """x axis: 'steps' (env steps) or 'wall' (minutes)"""
    prefix: str = ""
    """file name prefix of the outputs"""
    smooth: int = 1
    """running mean over this many logged points before plotting (tables use the raw values)"""
    smooth_steps: int = 0
    """running mean over the points of the last this many env steps (0: off)"""
    published: list[str] = field(default_factory=list)
    """papers' final values to mark, NAME=VALUE[@STEPS] in the plotted scalar's units (a win rate of 72.5%:
    0.725); NAME is the label, and the colour of the experiment of that name where there is one"""


def main(args: Args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.x not in ("steps", "wall"):
        raise SystemExit(f"--x {args.x!r}: use --x steps (env steps) or --x wall (minutes)")
    os.makedirs(args.out_dir, exist_ok=True)
    found = collect(args.runs_dir, args.tag, args.env_ids, args.exp_names)
    if not found:
        raise SystemExit(f"no runs with scalar {args.tag!r} under {args.runs_dir!r}")
    x_col = 0 if args.x == "steps" else 2
    marks = parse_published(args.published)
    slug = args.tag.replace("/", "_") + ("" if x_col == 0 else "__wall")  # a wall-time plot keeps the steps plot
    tab10 = plt.get_cmap("tab10").colors
    tab20 = plt.get_cmap("tab20").colors
    tab20 = tab20[0::2] + tab20[1::2]  # its ten dark colours, then its ten light ones
    for env_id, experiments in sorted(found.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        palette = tab10 if len(experiments) <= 10 else tab20
        colours = {}
        for i, (exp_name, curves) in enumerate(sorted(experiments.items())):
            colour = colours[exp_name] = palette[i % len(palette)]  # past 20 lines colours repeat; none is left out
            grid, mean, low, high = mean_curve(curves, x_col, window=args.smooth, span=args.smooth_steps)
            if x_col == 2:
                grid = grid / 60
            dot = {"marker": "o", "markevery": [0]} if grid[0] == grid[-1] else {}  # one x value: a line would not show
            label = f"{exp_name} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
            ax.plot(grid, mean, label=label, color=colour, **dot)
            ax.fill_between(grid, low, high, color=colour, alpha=0.2)
        for name, value, steps in marks:
            colour = colours.get(name, "0.4")
            ax.axhline(value, color=colour, linestyle="--", linewidth=1, label=f"{name}: published")
            if steps is not None and x_col == 0:  # the budget is in env steps, not minutes
                ax.plot([steps], [value], marker="*", markersize=10, color=colour)
        ax.set_xlabel("env steps" if x_col == 0 else "wall time (min)")
        ax.set_ylabel(args.tag)
        ax.set_title(env_id)
        ax.legend(fontsize=8)
        fig.tight_layout()
        base = os.path.join(args.out_dir, f"{args.prefix}{env_id}__{slug}")
        fig.savefig(base + ".png", dpi=120)
        plt.close(fig)
        with open(base + ".md", "w") as f:
            f.write(table(env_id, experiments, args.tag, args.smooth, args.smooth_steps) + "\n")
        print(f"wrote {base}.png and {base}.md")


if __name__ == "__main__":
    main(tyro.cli(Args))
