"""The run plumbing of the algorithm files: everything around the algorithm, none of it.

Each algorithm file calls these in one line each:

    resolve_rollout(args, defaults)     unset --num-envs / --num-steps / ...: many envs on batched (jax) envs
    check_args(args, one_batch)         the errors every file shares, before any folder is made
    device(args.cuda)                   torch.device, or an error when --cuda finds no GPU
    make_run_dir(env_id, exp_name, seed)  runs/{env_id}__{exp_name}__{seed}__{time}[-k], never shared
    make_writer(args, run_dir)          TensorBoard writer (+ W&B with --track), hyper-parameters logged;
                                        about LOG_POINTS points per training curve (ThinnedWriter)
    Training(run_dir, total_timesteps)  progress bar with ETA; Ctrl-C asks the loop to stop after the
                                        current iteration (`training.interrupted`)
    log_eval(writer, step, ret, win, n) the eval line, printed and logged
    video_path / Video                  MP4 of the first episode of the first eval env
    save_checkpoint / load_checkpoint   atomic save; clear errors for broken checkpoints
    resume_run(path, algo, args)        --resume: the saved run's flags, training state and folder
    rng_state / set_rng_state           the random generators' states, saved for --resume
    print_summary(...)                  run dir, final eval, model path, the TensorBoard command
    main()                              around `train(tyro.cli(Args))`: Ctrl-C and early failures

See docs/usage.md for what a user sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings

import numpy as np
import torch

from envs import batched, parse_options

# the Args fields every file derives itself; a user who passes one would be silently overridden
RUNTIME_FIELDS = ("batch_size", "minibatch_size", "num_iterations")
# the flags a resumed run may change (--resume); every other flag is the saved run's
RESUME_MAY_CHANGE = (
    "total_timesteps", "eval_interval", "eval_episodes", "capture_video", "cuda", "torch_threads", "track",
    "wandb_project_name", "wandb_entity",
)  # fmt: skip
VIDEO_MAX_FRAMES = 200  # frames rendered per video: a 1000-step MuJoCo episode renders every 5th step

_current = {"run_dir": None, "updated": False, "training": None, "terminated": False}  # this process's run


# ------------------------------------------------------------------------------ arguments
def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resolve_rollout(args, defaults: dict[str, dict[str, int]]) -> None:
    """Fill in the rollout flags left unset (None): `defaults["batched"]` where one jitted call steps the
    whole batch (`envs.batched`: SMAX, the jax particle worlds; 128 envs cost little more than 8), else
    `defaults["plain"]`. Flags the user passed are kept. Prints the resolved values."""
    options = parse_options(args.env_options)
    kind = "batched" if batched(args.env_id, options) else "plain"  # an unknown id raises the error listing the ids
    for name, value in defaults[kind].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    values = " ".join(f"{flag(name)} {getattr(args, name)}" for name in defaults[kind])
    if kind == "batched":
        print(f"rollout: {values} ({args.env_id} is batched: many envs unless --num-envs is given)", flush=True)
    else:
        print(f"rollout: {values}", flush=True)


def check_args(args, one_batch: int, runtime_fields: tuple[str, ...] = RUNTIME_FIELDS) -> None:
    """The checks every file shares; `one_batch`: the env steps of one iteration (num_envs * num_steps)."""
    if args.total_timesteps < one_batch:
        raise ValueError(
            f"--total-timesteps {args.total_timesteps} is below one iteration of {one_batch} env steps "
            f"(num_envs x steps per iteration); pass at least {one_batch}"
        )
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if f.name.endswith("learning_rate") and not value > 0:
            raise ValueError(f"{flag(f.name)} must be positive, got {value}")
        if f.name in runtime_fields and value != f.default:
            raise ValueError(f"{flag(f.name)} is filled in at runtime from the other flags; do not pass it")
    if args.cuda and not torch.cuda.is_available():
        raise ValueError("--cuda was given, but torch finds no GPU; drop --cuda or install a CUDA build of torch")


def device(cuda: bool) -> torch.device:
    return torch.device("cuda" if cuda else "cpu")  # check_args made sure a GPU is there


# ------------------------------------------------------------------------ run folder, logs
def make_run_dir(env_id: str, exp_name: str, seed: int, root: str = "runs") -> str:
    """runs/{env_id}__{exp_name}__{seed}__{time}, with -2, -3, ... when taken (os.mkdir is exclusive)."""
    os.makedirs(root, exist_ok=True)
    base = os.path.join(root, f"{env_id}__{exp_name}__{seed}__{int(time.time())}")
    for k in range(1, 10_000):
        path = base if k == 1 else f"{base}-{k}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        _current.update(run_dir=path, updated=False)
        return path
    raise RuntimeError(f"could not create a run folder next to {base}")


# a training curve keeps about this many points however long the run: a 2e7-step run of a file that logs every
# few hundred env steps would otherwise write a TensorBoard file of hundreds of MB
LOG_POINTS = 2000


class ThinnedWriter:
    """A TensorBoard writer that keeps about LOG_POINTS points per training curve: the values of a tag logged
    within `every` env steps of its last point are written as their mean, at the step of the last of them.
    The evaluations (eval/*) are written as they come, and each one first writes what is pending, so that a
    run resumed from the save after an evaluation logs the same points as the run left alone."""

    def __init__(self, writer, every: int, since: int | None = None):
        self.writer, self.every = writer, every
        self.pending: dict[str, tuple[float, int, int]] = {}  # tag -> (sum, count, step of the last value)
        self.last: dict[str, int] = {}  # tag -> step of its last point
        self.since = since  # where the window of a tag without a point starts (None: its first value is a point)

    def add_scalar(self, tag: str, value, global_step: int) -> None:
        if self.every <= 1 or tag.startswith("eval/"):
            self.writer.add_scalar(tag, value, global_step)
            return
        total, count, _ = self.pending.get(tag, (0.0, 0, global_step))
        self.pending[tag] = (total + float(value), count + 1, global_step)
        start = self.last.get(tag, self.since)
        if start is None or global_step - start >= self.every:
            self._write(tag)

    def _write(self, tag: str) -> None:
        total, count, step = self.pending.pop(tag)
        self.writer.add_scalar(tag, total / count, step)
        self.last[tag] = step

    def flush_pending(self, global_step: int) -> None:
        """Write every pending mean; the windows start again at global_step."""
        for tag in list(self.pending):
            self._write(tag)
        self.last.clear()
        self.since = global_step

    def close(self) -> None:
        for tag in list(self.pending):
            self._write(tag)
        self.writer.close()

    def __getattr__(self, name):  # add_text, flush, ...: the SummaryWriter's own
        return getattr(self.writer, name)


def make_writer(args, run_dir: str, purge_step: int = 0):
    """TensorBoard writer on run_dir (a ThinnedWriter), mirrored to Weights & Biases with --track; logs the
    hyper-parameters. `purge_step` (a resumed run's step + 1): TensorBoard drops what the run logged at or after it
    before it stopped, so the curves continue from the saved state without a doubled stretch."""
    if getattr(args, "track", False):
        try:
            import wandb
        except ImportError as e:
            raise ImportError("--track logs to Weights & Biases: pip install wandb (or drop --track)") from e
        wandb.init(  # WANDB_MODE=offline keeps the run on disk (wandb sync uploads it later)
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=os.path.basename(run_dir),
            dir=run_dir,
            save_code=True,
        )
    from torch.utils.tensorboard import SummaryWriter

    every = args.total_timesteps // LOG_POINTS
    if purge_step:  # the saved state was written after an evaluation (or at a stop): the windows start there
        return ThinnedWriter(SummaryWriter(run_dir, purge_step=purge_step), every, since=purge_step - 1)
    writer = SummaryWriter(run_dir)
    table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
    return ThinnedWriter(writer, every)


def log_eval(writer, global_step: int, eval_return: float, eval_win: float, episodes: int) -> None:
    """The eval line (printed and logged on make_writer's writer): eval/episodic_return, eval/win_rate where defined."""
    writer.flush_pending(global_step)  # the training curves' pending means, before the save that follows
    writer.add_scalar("eval/episodic_return", eval_return, global_step)
    if not math.isnan(eval_win):
        writer.add_scalar("eval/win_rate", eval_win, global_step)
    print(f"eval at step {global_step:,}: {format_eval(eval_return, eval_win, episodes)}", flush=True)


def format_eval(eval_return: float, eval_win: float, episodes: int) -> str:
    win = "" if math.isnan(eval_win) else f", win rate {eval_win:.2f}"
    return f"return {eval_return:.3f}{win} over {episodes} episodes"


# ------------------------------------------------------------------- progress and Ctrl-C
class Training:
    """A progress bar (elapsed, ETA, latest return / win rate) and the Ctrl-C switch of a training loop.

    Call `update(global_step, recent_returns, recent_wins)` once an iteration's bookkeeping is done,
    and leave the loop when `interrupted`: the first Ctrl-C only sets it (the model is then saved),
    a second one aborts. On a terminal the bar redraws in place; elsewhere (logs, pipes) a plain
    line is printed at every tenth of the run.
    """

    def __init__(self, run_dir: str, total_timesteps: int, start_step: int = 0):
        if _current["training"] is not None:  # a run of this process that raised without closing
            _current["training"].close()
        _current.update(training=self, terminated=False)
        self.run_dir, self.total = run_dir, total_timesteps
        self.interrupted, self.start, self.start_step = False, time.time(), start_step  # start_step: --resume
        self.next_tenth = 10 * start_step // total_timesteps + 1
        self._old_handler = self._old_term_handler = None
        if threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGINT, self._on_sigint)
            self._old_term_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self.bar = None
        print(f"logging to {run_dir} (tensorboard --logdir {os.path.dirname(run_dir) or '.'})", flush=True)
        if sys.stdout.isatty():
            from rich import progress as rp

            self.bar = rp.Progress(
                rp.BarColumn(bar_width=20),
                rp.MofNCompleteColumn(),
                rp.TimeElapsedColumn(),
                rp.TextColumn("ETA"),
                rp.TimeRemainingColumn(),
                rp.TextColumn("{task.fields[stats]}"),
                refresh_per_second=2,
            )
            self.task = self.bar.add_task("training", total=total_timesteps, completed=start_step, stats="")
            self.bar.start()

    def _on_sigint(self, signum, frame):
        self.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts
        print("\nCtrl-C: stopping after this iteration and saving the model (Ctrl-C again to abort)", flush=True)

    def _on_sigterm(self, signum, frame):  # a scheduler's stop (Slurm, Ray, kill): as a first Ctrl-C
        self.interrupted = _current["terminated"] = True  # main() then exits 143: not finished, to be resumed
        print("\nSIGTERM: stopping after this iteration and saving the model", flush=True)

    def update(self, global_step: int, recent_returns=(), recent_wins=()) -> None:
        """After an iteration: show the step count and the mean of the latest episodes' returns / wins."""
        _current["updated"] = True
        episodic_return = float(np.mean(recent_returns)) if len(recent_returns) else float("nan")
        win_rate = float(np.mean(recent_wins)) if len(recent_wins) else float("nan")
        elapsed = time.time() - self.start
        stats = f"SPS {int((global_step - self.start_step) / max(elapsed, 1e-9)):,}  return {episodic_return:.3f}"
        if not math.isnan(win_rate):
            stats += f"  win rate {win_rate:.2f}"
        if self.bar is not None:
            self.bar.update(self.task, completed=min(global_step, self.total), stats=stats)
        elif 10 * global_step >= self.next_tenth * self.total:
            self.next_tenth = 10 * global_step // self.total + 1
            eta = elapsed * max(self.total - global_step, 0) / max(global_step - self.start_step, 1)
            print(
                f"step {global_step:,}/{self.total:,} ({100 * global_step / self.total:.0f}%)  "
                f"elapsed {fmt_time(elapsed)}  ETA {fmt_time(eta)}  {stats}",
                flush=True,
            )

    def close(self) -> None:
        if _current["training"] is self:
            _current["training"] = None
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self._old_handler is not None:
            signal.signal(signal.SIGINT, self._old_handler)
            signal.signal(signal.SIGTERM, self._old_term_handler)
            self._old_handler = self._old_term_handler = None


def fmt_time(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@contextlib.contextmanager
def main():
    """Around `train(tyro.cli(Args))`: a second Ctrl-C ends with one line instead of a traceback, a run
    that failed before its first update leaves no run folder behind (no orphan in TensorBoard), and a run
    stopped by SIGTERM exits 143 (128 + SIGTERM) once saved, so that a scheduler or benchmark/run.py sees
    an unfinished run (to resume) rather than a finished one."""
    try:
        yield
    except BaseException as e:
        if _current["training"] is not None:
            _current["training"].close()  # stop the bar, give Ctrl-C back
        run_dir = _current["run_dir"]
        if run_dir is not None and not _current["updated"] and os.path.isdir(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"removed {run_dir}: the run ended before its first update", file=sys.stderr)
        if isinstance(e, KeyboardInterrupt):
            print("aborted (Ctrl-C)", file=sys.stderr)
            raise SystemExit(130) from None
        raise
    if _current["terminated"]:
        raise SystemExit(143)


# ------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str, payload: dict) -> str:
    """torch.save to a temporary file in the same folder, then os.replace: never a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the permissions of an ordinary file, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


def load_checkpoint(path: str, algo: str, env_id: str | None) -> dict:
    """A saved model, checked: a readable file, made by `algo` for `env_id` (None: any), with finite weights."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist; pass the path of a saved runs/<run>/<exp_name>.pt")
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): its save did not finish; use another checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); the file is truncated or not a "
            "saved model: use another checkpoint"
        ) from e
    if not isinstance(ckpt, dict) or "algo" not in ckpt:
        raise ValueError(f"{path} is not a model saved by these files (no 'algo' entry)")
    if ckpt["algo"] != algo:
        raise ValueError(
            f"{path} was saved by {ckpt['algo']}.py; evaluate it with: "
            f"python {ckpt['algo']}.py --env-id {ckpt.get('env_id')} --checkpoint {path}"
        )
    if env_id is not None and ckpt.get("env_id") != env_id:
        raise ValueError(f"{path} was made for env {ckpt.get('env_id')}; pass --env-id {ckpt.get('env_id')}")
    bad = non_finite({k: v for k, v in ckpt.items() if k != "args"}, "checkpoint")
    if bad:
        raise ValueError(f"{path} holds NaN or infinite weights ({', '.join(bad[:3])}): the training diverged")
    return ckpt


def non_finite(tree, prefix: str) -> list[str]:
    """The names of the floating-point tensors/arrays in a nested dict/list that hold NaN or inf."""
    if isinstance(tree, dict):
        return [n for k, v in tree.items() for n in non_finite(v, f"{prefix}.{k}")]
    if isinstance(tree, (list, tuple)):
        return [n for i, v in enumerate(tree) for n in non_finite(v, f"{prefix}[{i}]")]
    if isinstance(tree, torch.Tensor) and tree.is_floating_point():
        return [] if bool(torch.isfinite(tree).all()) else [prefix]
    if isinstance(tree, np.ndarray) and np.issubdtype(tree.dtype, np.floating):
        return [] if bool(np.isfinite(tree).all()) else [prefix]
    return []


def rng_state() -> dict:
    """The states of the random generators a training loop draws from (python, numpy, torch), for --resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_run(path: str, algo: str, args, runtime_fields: tuple[str, ...] = RUNTIME_FIELDS) -> dict:
    """--resume PATH: the checkpoint of a run that saved its training state (`<run dir>/<exp_name>.pt`),
    checked as `load_checkpoint` does. Sets `args` to the saved run's flags, except those of RESUME_MAY_CHANGE
    that were passed (a field left at its default takes the saved value; another flag that differs is an error,
    since the run would silently change). `runtime_fields`: as for check_args (maddpg's --batch-size is a flag).
    Returns the checkpoint; the caller restores its `training` entry."""
    if not os.path.isfile(path):
        raise ValueError(f"--resume {path!r} does not exist; pass the saved model of the run: runs/<run>/<exp_name>.pt")
    ckpt = load_checkpoint(path, algo, env_id=None)  # a different --env-id is refused below, with the flags
    if "training" not in ckpt:
        raise ValueError(
            f"{path} holds a model but no training state (a version of {algo}.py from before --resume saved it); "
            "it can be evaluated with --checkpoint, not resumed"
        )
    default = type(args)()
    changed = []
    for f in dataclasses.fields(args):
        if f.name in ("resume", "checkpoint") or f.name in runtime_fields or f.name not in ckpt["args"]:
            continue
        value, stored = getattr(args, f.name), ckpt["args"][f.name]
        if isinstance(stored, list):
            stored = tuple(stored)
        if value == getattr(default, f.name) or value == stored:
            setattr(args, f.name, stored)
        elif f.name not in RESUME_MAY_CHANGE:
            changed.append(f"{flag(f.name)} {value} (the run's: {stored})")
    if changed:
        raise ValueError(
            f"--resume continues the run with its own flags, but these differ: {'; '.join(changed)}. Drop them "
            f"(only {', '.join(flag(n) for n in RESUME_MAY_CHANGE)} may change), or start a new run"
        )
    done = ckpt["training"]["global_step"]
    if done >= args.total_timesteps:
        raise ValueError(
            f"the run at {path} has already trained {done:,} of its --total-timesteps {args.total_timesteps:,}; "
            "pass a larger --total-timesteps to train it further"
        )
    return ckpt


# ------------------------------------------------------------------------------------ video
def video_path(folder: str, global_step: int | str) -> str:
    return os.path.join(folder, "videos", f"eval_{global_step}.mp4")


def render_options(path: str | None) -> dict:
    """The envs.make options of an evaluation env: rgb frames where a video is recorded."""
    return {"render_mode": "rgb_array"} if path is not None else {}


def _simulators(env):
    """The env under wrappers (e.g. mamujoco's GlobalObservation): the one that holds the simulators."""
    from envs.core import MultiAgentVecEnv

    while not hasattr(env, "vec") and isinstance(getattr(env, "env", None), MultiAgentVecEnv):
        env = env.env
    return env


def env_fps(env) -> float:
    """Frames per second of real time: the env's render_fps, 1 / dt of a MuJoCo env, or the metadata
    render_fps of the first PettingZoo env of a gymnasium vector env (mpe2)."""
    env = _simulators(env)
    if getattr(env, "render_fps", None):
        return float(env.render_fps)
    if getattr(env, "dt", None):  # the fast MuJoCo path: timestep x frame skip
        return 1.0 / env.dt
    if not hasattr(getattr(env, "vec", None), "envs"):
        raise ValueError(f"--capture-video needs an env stepped in this process; {env.env_id} is not")
    inner = env.vec.envs[0].env  # the PettingZoo env behind the first gymnasium env of the batch
    single = getattr(inner, "single_agent_env", None)  # gymnasium-robotics' MaMuJoCo wraps one MuJoCo env
    if single is not None:
        return 1.0 / single.unwrapped.dt
    return float(inner.metadata["render_fps"])


def render_first(env) -> np.ndarray:
    """The frame of env 0 (rendering only that one where the batch is a gymnasium vector env)."""
    env = _simulators(env)
    if hasattr(getattr(env, "vec", None), "envs"):
        return np.asarray(env.vec.envs[0].render())
    return np.asarray(env.render())


class Video:
    """Records the first episode of env 0 of an evaluation as an MP4 at the env's real speed.

    Every k-th step is rendered (k keeps a long episode under VIDEO_MAX_FRAMES frames) and the MP4
    plays at fps / k, so one second of video is one second of the episode. A None path records nothing.
    """

    def __init__(self, env, path: str | None):
        self.path, self.env, self.frames, self.t, self.done = path, env, [], 0, path is None
        if path is not None:
            self.skip = max(1, math.ceil((env.episode_limit or VIDEO_MAX_FRAMES) / VIDEO_MAX_FRAMES))
            self.fps = env_fps(env) / self.skip

    def capture(self) -> None:
        """Before a step: a frame of env 0 (every k-th step) until its first episode has ended."""
        if not self.done and self.t % self.skip == 0:
            self.frames.append(render_first(self.env))
        self.t += 1

    def stepped(self, terminated, truncated) -> None:
        """After a step: stop at the end of env 0's first episode (its last state is the final frame)."""
        if not self.done and (terminated[0] or truncated[0]):
            self.done = True

    def save(self) -> str | None:
        if self.path is None or not self.frames:
            return None
        import imageio.v2 as imageio

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with warnings.catch_warnings():  # the ffmpeg subprocess execs at once: jax's fork warning does not apply
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            with imageio.get_writer(self.path, fps=self.fps, codec="libx264", macro_block_size=2, quality=6) as w:
                for frame in self.frames:
                    w.append_data(frame)
        print(f"video saved to {self.path}", flush=True)
        return self.path


# ---------------------------------------------------------------------------------- summary
def print_summary(run_dir, global_step, eval_return, eval_win, episodes, model_path, interrupted=False) -> None:
    """The closing lines of a run: where it is, how it did, how to look at it."""
    if interrupted:
        final = f"skipped (interrupted at step {global_step:,})"
    else:
        final = format_eval(eval_return, eval_win, episodes)
    lines = [f"run dir:     {run_dir}", f"final eval:  {final}", f"model:       {model_path or 'not saved'}"]
    if run_dir is not None:
        lines.append(f"TensorBoard: tensorboard --logdir {os.path.dirname(run_dir) or '.'}")
    print("\n".join(lines), flush=True)
