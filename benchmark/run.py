"""Sweeps: algorithms x env ids x seeds, every run a Ray task, from one laptop to a cluster (docs/sweeps.md).

    python benchmark/run.py --experiment param-sharing --seeds 1 2 3           # local Ray, one run per core
    python benchmark/run.py --algos mappo ippo --env-ids mpe-spread --seeds 1 2 3 --extra="--total-timesteps 200000"
    python benchmark/run.py --experiment mamujoco --dry-run                      # only print the commands
    python benchmark/run.py --experiment smax-mat-table --address auto --out-dir /shared/sweeps  # join a cluster

With no `--address` an embedded Ray instance starts on this machine (nothing to set up); `--address auto`
(a cluster this machine belongs to, e.g. inside a Slurm allocation) or `--address ray://HOST:10001`
(Ray Client, from outside the cluster) joins an existing one. Each run is one Ray task that asks for
`--cpus-per-run` CPUs (and `--gpus-per-run` GPUs with `--cuda`), gives torch and XLA that many threads,
and runs the algorithm file as a subprocess started in `--out-dir`, so its run folder lands in
OUT_DIR/runs/ and its console output in OUT_DIR/runs/logs/. A run that fails or is killed is started
again, up to `--retries` times, without touching the others; the sweep ends with a table (run, status,
wall time, final greedy evaluation, run dir). A finished run leaves `sweep.json` in its run folder, so
rerunning the same sweep skips it (`--force` runs it again); a failed attempt's folder is moved to
OUT_DIR/runs/failed/, out of the way of `benchmark/plot.py`. A run started again (a retry, or the same
sweep started again after it was stopped) continues from its last save with `--resume` where an earlier
attempt saved its training state (every evaluation saves it), in the earlier attempt's folder; not with
`--collect`, whose attempts' folders live on their nodes.

`--experiment param-sharing` gives exactly the commands behind docs/param-sharing.md's table
and figures (with their budgets); `smax-mat-table`, `smax-hard`, `mamujoco-harl` and `mpe-spread-harl`
are the reproduction runs at the papers' budgets (issue 50); the other experiments are the algorithm x
env grids of the lecture's figures, with the budget set by `--extra`, whose arguments are appended to
every command (the algorithm files keep the last value of a repeated flag, so `--extra` wins).
Then `python benchmark/plot.py` draws the curves and tables from runs/.

One thread per run: two runs that each spin up one thread per core on a 2-core machine were measured
about 25x slower than two single-threaded runs (docs/troubleshooting.md, "Slow on many cores").
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGOS = ["ia2c", "ippo", "maa2c", "mappo", "maddpg", "coma", "happo", "hatrpo", "mat"]

# ------------------------------------------------------------------------------------------ experiments

# the budgets of the parameter-sharing figures (docs/param-sharing.md); `--extra` comes after them, so it wins
PARAM_SHARING_BUDGETS = {
    "smax-3m": ["--total-timesteps", "500000"],
    "smax-2s3z": ["--total-timesteps", "1000000"],
    "mpe-spread": ["--total-timesteps", "150000", "--eval-interval", "25000"],
    "halfcheetah-6x1": ["--total-timesteps", "1000000", "--eval-interval", "100000"],
    "tsc-cologne8": ["--total-timesteps", "200000", "--eval-interval", "50000", "--eval-episodes", "2"],
}


def budget(steps: int, evals: int = 10) -> list[str]:
    """`--total-timesteps steps` with an evaluation every tenth of it (a learning curve of `evals` points)."""
    return ["--total-timesteps", str(steps), "--eval-interval", str(steps // evals)]


# the MAT paper's SMAC table (docs/mat.md, "Results"): map -> its budget. 2s3z is only in the MAPPO paper's
# table, whose copy in the lecture states no budget: 2e6, twice our earlier 1e6 runs, is our choice.
MAT_TABLE_BUDGETS = {"smax-3m": 500_000, "smax-2s3z": 2_000_000, "smax-3s5z": 3_000_000}
MAT_TABLE_ALGOS = [
    ("mat", []),
    ("mat", ["--dec", "--exp-name", "mat-dec"]),
    ("mappo", []),
    ("happo", []),
    ("mat", ["--clip-coef", "0.05", "--exp-name", "mat-clip005"]),  # the MAT repository's SMAC scripts' clip
]

EPYMARL_ON_POLICY_T_MAX, EPYMARL_T_MAX = 20_050_000, 2_050_000  # EPyMARL's algs/*.yaml, envs/gymma.yaml

HARL_ROLLOUT = ["--num-envs", "20", "--num-steps", "200"]  # HARL's n_rollout_threads x episode_length

# experiment -> list of (algorithm file, env id, extra arguments)
EXPERIMENTS: dict[str, list[tuple[str, str, list[str]]]] = {
    # the lecture's MAPPO vs MAPPO-Ind table: parameter sharing on and off
    "param-sharing": [
        (algo, env_id, [*flags, *steps])
        for env_id, steps in PARAM_SHARING_BUDGETS.items()
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
    "traffic": [(algo, env_id, []) for env_id in ["tsc-2x2", "tsc-4x4"] for algo in ALGOS],
    # issue 50, reproduction at the papers' budgets. The MAT paper's SMAC table, its four algorithms (and MAT
    # with its repository's clip 0.05)
    "smax-mat-table": [
        (algo, env_id, [*flags, *budget(steps)])
        for env_id, steps in MAT_TABLE_BUDGETS.items()
        for algo, flags in MAT_TABLE_ALGOS
    ],
    # the hard maps at 1e7 (the MAT table's budget), the recurrent files where the papers used recurrent policies
    "smax-hard": [
        *[(algo, "smax-5m_vs_6m", budget(10_000_000)) for algo in ["mappo_rnn", "happo_rnn", "ippo", "mat"]],
        *[(algo, "smax-6h_vs_8z", budget(10_000_000)) for algo in ["mat", "mappo_rnn"]],
    ],
    # the HATRPO paper's Multi-Agent MuJoCo figures (1e7 steps) and the MAT paper's HalfCheetah 6x1 figure,
    # in HARL's observation setting (the state plus the agent's one-hot id: docs/mamujoco.md), each file's defaults
    "mamujoco-harl": [
        (algo, env_id, ["--env-options", "observation=global", "--exp-name", f"{algo}-global", *budget(10_000_000)])
        for env_id, algos in [
            ("halfcheetah-6x1", ["happo", "hatrpo", "mappo", "mat"]),
            ("walker-2x3", ["happo", "hatrpo", "mappo"]),
        ]
        for algo in algos
    ],
    # HARL's MPE budget (tuned_configs/pettingzoo_mpe/simple_spread_v2-*: num_env_steps 1e7); HAPPO and HATRPO
    # with HARL's rollout (20 envs x 200 steps), which learns more per env step there than their batched
    # default (docs/throughput.md, "MAPPO and HAPPO on mpe-spread"); MAPPO with its (batched) default
    "mpe-spread-harl": [
        (algo, "mpe-spread", [*flags, *budget(10_000_000, evals=20)])
        for algo, flags in [("mappo", []), *[(a, HARL_ROLLOUT) for a in ["happo", "hatrpo"]]]
    ],
    # issue 53: the EPyMARL paper's six policy-based algorithms on two LBF tasks and one RWARE task, on the jax
    # backends, at EPyMARL's budgets (its algorithm configs, src/config/algs/*.yaml: t_max 20,050,000 for the
    # on-policy five; MADDPG's config sets none, so the gymma env config's 2,050,000); 100 episodes per
    # evaluation, as EPyMARL's test_nepisode
    "epymarl": [
        (algo, env_id, ["--env-options", "backend=jax", *budget(steps, evals=20), "--eval-episodes", "100"])
        for env_id in ["lbf-8x8-2p-2f-coop", "lbf-10x10-3p-3f", "rware-tiny-4ag"]
        for algo, steps in [
            *[(a, EPYMARL_ON_POLICY_T_MAX) for a in ["ia2c", "ippo", "maa2c", "mappo", "coma"]],
            ("maddpg", EPYMARL_T_MAX),
        ]
    ],
}


def commands(args: Args) -> list[list[str]]:
    """[python, "<algo>.py", *arguments] of every run: experiment (or algos x env ids) x seeds."""
    if args.experiment:
        if args.experiment not in EXPERIMENTS:
            raise SystemExit(f"unknown experiment {args.experiment!r}; choose from {', '.join(EXPERIMENTS)}")
        plan = EXPERIMENTS[args.experiment]
    else:
        if not args.algos or not args.env_ids:
            raise SystemExit("give --experiment NAME, or --algos and --env-ids")
        plan = [(a, e, []) for e in args.env_ids for a in args.algos]
    if not args.seeds:
        raise SystemExit("give at least one seed: --seeds 1 2 3")
    common = []
    if args.cpus_per_run > 1:
        common += ["--torch-threads", str(args.cpus_per_run)]
    if args.cuda:
        common += ["--cuda"]
    return [
        [
            sys.executable,
            f"{algo}.py",
            "--env-id",
            env_id,
            "--seed",
            str(seed),
            *flags,
            *common,
            *shlex.split(args.extra),
        ]
        for algo, env_id, flags in plan
        for seed in args.seeds
    ]


def check_algorithm_files(cmds: list[list[str]]) -> None:
    missing = sorted({c[1] for c in cmds if not os.path.isfile(os.path.join(ROOT, c[1]))})
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found in {ROOT}: this checkout does not have these algorithm files "
                         f"yet (see `git log`); drop them with --algos, or pull the branch that adds them")  # fmt: skip


def key(cmd: list[str]) -> str:
    """A run's identity: its command without the interpreter (the same in every sweep that makes it)."""
    return shlex.join(cmd[1:])


def thread_env(threads: int) -> dict[str, str]:
    """The environment variables of a run given `threads` cores: OpenMP (torch) and XLA (SMAX) thread counts,
    unless the user set them."""
    env = {}
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    if threads == 1 and "XLA_FLAGS" not in os.environ:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def machine() -> str:
    """Besides the seed, what decides a run's last digits: torch's version and the CPU kernels it picked
    (docs/troubleshooting.md, "Your numbers differ from ours")."""
    import torch

    return f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores"


# ------------------------------------------------------------------------------------------ one run


def find_run_dir(runs_dir: str, pid: int, since: float) -> str | None:
    """The run folder the process `pid` wrote: TensorBoard names its events file
    events.out.tfevents.<time>.<host>.<pid>.<n>, whatever the folder itself is called."""
    pattern = os.path.join(
        glob.escape(runs_dir), "*", f"events.out.tfevents.*.{glob.escape(socket.gethostname())}.{pid}.*"
    )
    found = [os.path.dirname(p) for p in glob.glob(pattern) if os.path.getmtime(p) >= since - 1]
    return max(found, key=os.path.getmtime) if found else None


def final_eval(run_dir: str | None) -> dict[str, float | None]:
    """The run's last greedy evaluation, read from its TensorBoard events (the names every file logs)."""
    if run_dir is None:
        return {"eval_return": None, "eval_win_rate": None}
    from benchmark.plot import read_scalars

    last = {}
    for name, tag in [("eval_return", "eval/episodic_return"), ("eval_win_rate", "eval/win_rate")]:
        points = read_scalars(run_dir, tag)
        last[name] = float(points[-1][1]) if points else None
    return last


def log_name(cmd: list[str]) -> str:
    """The file name of a command's console output in runs/logs/: the whole command, so unique."""
    name = "_".join(p.strip("-").replace("/", "_") for p in cmd[1:])
    if len(name) > 200:  # too long for a file name: cut, and told apart by a hash of the whole
        name = f"{name[:190]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return f"{name}.log"


def sweep_status(folder: str) -> str | None:
    """The status `execute` wrote in a run folder's sweep.json ("ok", "failed"), or None."""
    try:
        with open(os.path.join(folder, "sweep.json")) as f:
            return json.load(f).get("status")
    except (OSError, ValueError):
        return None


def earlier_attempt(work_dir: str, log_path: str) -> str | None:
    """The checkpoint to `--resume` from, where an earlier attempt of this command (killed, failed, or its sweep
    stopped) saved its training state: its log names its run folder. An unfinished folder that cannot be resumed
    goes to runs/failed/ (out of benchmark/plot.py's way); a resumable one comes back from there to runs/."""
    if not os.path.isfile(log_path):
        return None
    with open(log_path) as f:
        folders = [line.split()[2] for line in f if line.startswith("logging to ")]
    if not folders:
        return None
    name = os.path.basename(folders[-1])
    runs, failed = os.path.join(work_dir, "runs"), os.path.join(work_dir, "runs", "failed")
    folder = next((d for d in (os.path.join(runs, name), os.path.join(failed, name)) if os.path.isdir(d)), None)
    if folder is None or sweep_status(folder) == "ok":
        return None  # gone, or finished (and started again with --force); a failed or stopped one may resume
    checkpoint = os.path.join(folder, f"{name.split('__')[1]}.pt")  # runs/<env>__<exp_name>__<seed>__<time>
    try:
        import torch

        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        resumable = saved["training"]["global_step"] < saved["args"]["total_timesteps"]
    except Exception:  # no save, a model without training state, or a run that only missed its final evaluation
        resumable = False
    target = os.path.join(runs if resumable else failed, name)
    if folder != target:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(folder, target)
    return os.path.join("runs", name, os.path.basename(checkpoint)) if resumable else None


def execute(cmd: list[str], out_dir: str, env: dict[str, str], code_root: str | None = None, attempt: int = 1,
            collect: bool = False) -> dict:  # fmt: skip
    """Runs one command (a Ray task, or a plain call) as a subprocess started in `out_dir`, its output in
    out_dir/runs/logs/. Returns exit code, wall time, run folder, final evaluation, host; with `collect`,
    the run starts in a temporary folder of this node and the result carries its run folder and log
    as a .tar.gz (`archive`) for the driver to unpack."""
    code_root = code_root or os.getcwd()  # on a cluster the code is shipped as the task's working directory
    if code_root not in sys.path:
        sys.path.insert(0, code_root)
    work_dir = tempfile.mkdtemp(prefix="sweep-") if collect else out_dir
    if not os.path.isdir(work_dir):
        raise FileNotFoundError(
            f"--out-dir {work_dir} does not exist on {socket.gethostname()}: give a directory every node sees "
            "(shared storage), or --collect to bring each run folder back"
        )
    logs = os.path.join(work_dir, "runs", "logs")
    os.makedirs(logs, exist_ok=True)
    log_path = os.path.join(logs, log_name(cmd))
    resume = None if collect else earlier_attempt(work_dir, log_path)
    full = [sys.executable, os.path.join(code_root, cmd[1]), *cmd[2:]]  # this node's interpreter and copy
    if resume:
        full += ["--resume", resume]
    with open(log_path, "a" if attempt > 1 or resume else "w") as log:
        log.write(f"# {key(cmd)}\n# {machine()}\n" + (f"# attempt {attempt}\n" if attempt > 1 else ""))
        log.write(f"# resumed from {resume}\n" if resume else "")
        log.flush()  # before the run's own output
        start = time.time()
        proc = subprocess.Popen(full, cwd=work_dir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
        code = proc.wait()
    seconds = time.time() - start
    run_dir = find_run_dir(os.path.join(work_dir, "runs"), proc.pid, start)
    result = {"command": key(cmd), "code": code, "seconds": seconds, "attempt": attempt, "host": socket.gethostname(),
              "log": os.path.relpath(log_path, work_dir), **final_eval(run_dir if code == 0 else None)}  # fmt: skip
    if run_dir is not None and code != 0:  # out of benchmark/plot.py's way: it reads every folder of runs/
        failed = os.path.join(work_dir, "runs", "failed")
        os.makedirs(failed, exist_ok=True)
        run_dir = shutil.move(run_dir, os.path.join(failed, os.path.basename(run_dir)))
    result["run_dir"] = None if run_dir is None else os.path.relpath(run_dir, work_dir)
    if run_dir is not None:
        with open(os.path.join(run_dir, "sweep.json"), "w") as f:
            json.dump({**result, "status": "ok" if code == 0 else "failed"}, f, indent=1)
    if collect:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in [result["log"], result["run_dir"]]:
                if path is not None:
                    tar.add(os.path.join(work_dir, path), arcname=path)
        result["archive"] = buffer.getvalue()
        shutil.rmtree(work_dir, ignore_errors=True)
    return result


def finished_runs(out_dir: str) -> dict[str, dict]:
    """{command: its sweep.json} of every run folder in out_dir/runs/ that a sweep saw finish."""
    done = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(out_dir), "runs", "*", "sweep.json"))):
        with open(path) as f:
            record = json.load(f)
        if record.get("status") == "ok":
            done[record["command"]] = {**record, "run_dir": os.path.relpath(os.path.dirname(path), out_dir)}
    return done


# ------------------------------------------------------------------------------------------ the sweep


def check_reachable(address: str, timeout: float) -> None:
    """A cluster address where no Ray answers fails here: at once where nothing listens, else within `timeout`
    seconds (ray.init itself may wait for minutes)."""
    if address == "auto":
        return  # ray.init finds the cluster this machine belongs to, and says so at once if there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--address {address!r}: give auto, HOST:PORT (the head's GCS, default port 6379) "
                         f"or ray://HOST:PORT (Ray Client, default port 10001)")  # fmt: skip
    fix = "start one there with `ray start --head`, check host and port, or leave out --address to run here"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise SystemExit(
            f"no Ray cluster answers at {address} ({e.strerror or e}, waited at most {timeout:g} s): {fix}"
        ) from None
    # something listens; whether it is Ray, a child process finds out (ray.init's own retries may take minutes)
    probe = "import sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR'); ray.shutdown()"
    try:
        subprocess.run(
            [sys.executable, "-c", probe, address], timeout=timeout, capture_output=True, text=True, check=True
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(f"no Ray cluster answers at {address}: something listens there, but Ray did not connect "
                         f"within {timeout:g} s (--connect-timeout): {fix}") from None  # fmt: skip
    except subprocess.CalledProcessError as e:
        if "InvalidAuthToken" in e.stderr:
            raise SystemExit(
                f"the Ray cluster at {address} asks for its token (`ray start` turns token authentication on by "
                "default in this Ray version): run with RAY_AUTH_MODE=token and the head's token in RAY_AUTH_TOKEN "
                "or ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
            ) from None
        raise SystemExit(f"no Ray cluster answers at {address} ({(e.stderr.strip().splitlines() or ['?'])[-1]}): "
                         f"{fix}") from None  # fmt: skip


def start_ray(args: Args):
    import ray

    if args.address:
        check_reachable(args.address, args.connect_timeout)
        # ship this checkout to the workers (the .gitignore'd runs/ stays here); tasks start in their copy
        runtime_env = {"working_dir": ROOT, "excludes": ["runs/", ".git/", "benchmark/figures/"]}
        ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=False, logging_level="WARNING")
    elif not ray.is_initialized():
        cpus = args.workers * args.cpus_per_run if args.workers else None  # None: every core of this machine
        # address="local": a new instance, never one a file in /tmp/ray names (maybe stale: a hang)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    return ray


def clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} days"


def progress(done: int, running: int, failed: int, total: int, elapsed: float) -> str:
    eta = f"ETA {clock(elapsed / done * (total - done))}" if 0 < done < total else ("finished" if done else "ETA -")
    return f"[{done}/{total} done, {running} running, {failed} failed] {clock(elapsed)} elapsed, {eta}"


def table(rows: list[dict]) -> str:
    def number(x):
        return "-" if x is None else f"{x:.3f}"

    lines = ["| run | status | wall time | eval return | eval win rate | run dir |", "|---|---|---|---|---|---|"]
    for r in rows:
        wall = "-" if r.get("seconds") is None else clock(r["seconds"])
        evals = f"{number(r.get('eval_return'))} | {number(r.get('eval_win_rate'))}"
        lines.append(f"| {r['command']} | {r['status']} | {wall} | {evals} | {r.get('run_dir') or '-'} |")
    return "\n".join(lines)


def sweep(args: Args) -> list[dict]:
    """Runs every command of the sweep through Ray; returns one row per run for the final table."""
    cmds = commands(args)
    check_algorithm_files(cmds)
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    done_before = {} if args.force else finished_runs(out_dir)
    rows = {
        key(c): {**done_before[key(c)], "status": "skipped (finished before)"} for c in cmds if key(c) in done_before
    }
    skipped = len(rows)  # runs of this sweep finished before (out_dir may hold other sweeps' runs too)
    todo = [c for c in cmds if key(c) not in rows]
    print(f"{len(cmds)} runs, {len(rows)} finished before (skipped; --force runs them again), {len(todo)} to run "
          f"in {out_dir}/runs", flush=True)  # fmt: skip
    if todo:
        ray = start_ray(args)
        # max_calls=1: a fresh worker process per run (torch and tensorboard, imported for the log header and
        # the final evaluation, do not stay in memory); max_retries=0: the retries are counted here
        task = ray.remote(max_calls=1, max_retries=0)(execute).options(
            num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run if args.cuda else 0
        )
        code_root = None if args.address else ROOT
        env = thread_env(args.cpus_per_run)

        def submit(cmd, attempt):
            return task.remote(cmd, out_dir, env, code_root, attempt, args.collect)

        pending = {submit(c, 1): (c, 1) for c in todo}
        failed, start, last_print = 0, time.time(), 0.0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=10.0)
            for ref in ready:
                cmd, attempt = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # the task itself died: its worker, its node, or a bad --out-dir
                    e = getattr(e, "cause", None) or e  # a RayTaskError wraps the task's own exception
                    result = {
                        "command": key(cmd),
                        "code": f"{type(e).__name__}: {e}",
                        "attempt": attempt,
                        "seconds": None,
                    }
                if "archive" in result:
                    with tarfile.open(fileobj=io.BytesIO(result.pop("archive")), mode="r:gz") as tar:
                        tar.extractall(out_dir, filter="data")
                ok = result["code"] == 0
                if not ok and attempt <= args.retries:
                    print(f"[exit {result['code']}] attempt {attempt}: {key(cmd)}; starting it again", flush=True)
                    pending[submit(cmd, attempt + 1)] = (cmd, attempt + 1)
                    continue
                failed += not ok
                status = "ok" if ok else f"failed (exit {result['code']})"
                rows[key(cmd)] = {**result, "status": status + (f", attempt {attempt}" if attempt > 1 else "")}
                print(f"[{status}] {clock(result['seconds'] or 0)}  {key(cmd)}", flush=True)
            if ready or time.time() - last_print > 60:
                capacity = ray.cluster_resources().get("CPU", 1) // args.cpus_per_run
                n_done = len(rows) - skipped
                print(
                    progress(n_done, int(min(len(pending), capacity)), failed, len(todo), time.time() - start),
                    flush=True,
                )
                last_print = time.time()
    return [rows[key(c)] for c in cmds]


@dataclass
class Args:
    experiment: str = ""
    """a named experiment: param-sharing, mamujoco, smax, traffic, smax-mat-table, smax-hard, mamujoco-harl,
    mpe-spread-harl (`--dry-run` lists its commands)"""
    algos: list[str] = field(default_factory=list)
    """algorithm files without .py (instead of --experiment)"""
    env_ids: list[str] = field(default_factory=list)
    """env ids (instead of --experiment)"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds, one run each"""
    extra: str = ""
    """arguments appended to every command, as one string: --extra="--total-timesteps 200000 --dec" """
    address: str = ""
    """the Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT; empty: start Ray on this machine"""
    connect_timeout: float = 30.0
    """seconds to wait for --address to answer as a Ray cluster before giving up"""
    workers: int = 0
    """local Ray only: runs at the same time (0: one per --cpus-per-run cores of this machine)"""
    cpus_per_run: int = 1
    """CPUs each run asks Ray for; also its torch (--torch-threads), OpenMP and XLA thread count"""
    cuda: bool = False
    """train on the GPU: each run gets --cuda and asks Ray for --gpus-per-run GPUs"""
    gpus_per_run: float = 1.0
    """GPUs each run asks for with --cuda (a fraction packs several runs on one GPU)"""
    retries: int = 2
    """times a failed or killed run is started again"""
    out_dir: str = ROOT
    """where the runs start: their folders go to OUT_DIR/runs/, their console output to OUT_DIR/runs/logs/
    (on a cluster: a directory every node sees)"""
    collect: bool = False
    """for a cluster without shared storage: runs start in a temporary folder of their node, and each run
    folder and log come back to this machine's OUT_DIR/runs/ when the run ends"""
    force: bool = False
    """run again the runs that a sweep saw finish (their folders hold sweep.json); default: skip them"""
    dry_run: bool = False
    """only print the commands (Ray is not started)"""


def main(args: Args) -> int:
    if args.cpus_per_run < 1 or args.workers < 0 or args.retries < 0 or args.gpus_per_run <= 0:
        raise SystemExit("--cpus-per-run must be >= 1, --workers and --retries >= 0, --gpus-per-run > 0")
    if args.dry_run:
        print("\n".join(key(c) for c in commands(args)))
        return 0
    try:
        rows = sweep(args)
    except KeyboardInterrupt:  # Ray stops with this process, and the runs with it
        print("\ninterrupted: finished runs keep their sweep.json; the same command runs the rest", flush=True)
        return 130
    print(table(rows))
    return 0 if all(r["status"].startswith(("ok", "skipped")) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(tyro.cli(Args)))
