"""`fedseal simulate`: a whole federation on this machine, with progress and a final table.

The command validates its flags, prepares the run folder, starts Flower's simulation
engine in a child process (server/engine.py) in its own session, prints one line per
finished round (read from rounds.jsonl), and on exit - normal, error or Ctrl-C - stops
every process the engine started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from common import processes
from common.errors import FedSealError, InputError
from common.launch import progress
from common.learning.data import DATASETS, load_split
from common.run import inject, records
from common.run.settings import AGGREGATORS, ON_TAMPER, SECURE_MODES, RunSettings

LOG_NAME = "simulation.log"
MODE_HELP = {
    "none": "'none' sealed weights (the server sees each site's update)",
    "he": "'he' CKKS-encrypted under a key only the sites hold (the server adds ciphertexts, sees only the sum)",
    "masked": "'masked' pairwise-masked, SecAgg+ (the server sees only the sum)",
}
RUN_CONFIG = "run-config.json"  # the settings and site count, for --resume
POLL_SECONDS = 0.25


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `simulate` subcommand."""
    d = RunSettings()
    p = subparsers.add_parser(
        "simulate",
        help="run a federation on this machine (Flower simulation engine)",
        description="Train one model across N simulated sites with Flower's simulation engine, "
        "print one line per round and a final table, and write the run folder (summary.json, "
        "rounds.jsonl, audit.jsonl, model.safetensors, checkpoints/, simulation.log). Flags map "
        "to the run-config keys of `flwr run .` (shown in brackets).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default=d.dataset, choices=DATASETS,
                   help="bundled scikit-learn dataset: breast-cancer (569x30, MLP) or digits (1,797 8x8 images, "
                   "small CNN) [dataset]")
    p.add_argument("--clients", type=int, default=5,
                   help="number of simulated sites (>= 2); the server makes keys for all and waits for all "
                   "(at most --round-timeout seconds) [clients]")
    p.add_argument("--clients-per-round", type=int, default=d.clients_per_round, metavar="K",
                   help="sites sampled into each round's cohort, seeded by --seed and the round; 0 = all. "
                   "--min-clients applies to the cohort [clients-per-round]")
    p.add_argument("--rounds", type=int, default=d.num_rounds, help="federated rounds (>= 1) [num-rounds]")
    p.add_argument("--partition", default=d.partition,
                   help="how training data is split across sites: 'iid', or 'dirichlet:ALPHA' for label skew "
                   "(smaller ALPHA = more skew, e.g. dirichlet:0.3) [partition]")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seeds the initial model, the partition and every local step; same seed, same "
                   "results [seed]")
    p.add_argument("--local-epochs", type=int, default=d.local_epochs,
                   help="epochs each site trains per round [local-epochs]")
    p.add_argument("--lr", type=float, default=d.lr, help="local SGD learning rate (momentum 0.9) [lr]")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="local minibatch size [batch-size]")
    p.add_argument("--min-clients", type=int, default=d.min_clients,
                   help="fewest accepted replies that update the model in a round; with fewer the round is "
                   "skipped and the global model stays as it was [min-clients]")
    p.add_argument("--secure-mode", "--secure", dest="secure_mode", default=d.secure_mode, choices=SECURE_MODES,
                   help="how sites return updates: " + "; ".join(MODE_HELP[m] for m in SECURE_MODES) + " [secure-mode]")
    p.add_argument("--round-timeout", type=int, default=d.round_timeout, metavar="SECONDS",
                   help="seconds the server waits for replies at each step of a round; sites that do not answer "
                   "in time are left out of that round [round-timeout]")
    p.add_argument("--aggregator", default=d.aggregator, choices=AGGREGATORS,
                   help="how accepted updates combine: fedavg, or robust median / trimmed-mean / krum, which "
                   "limit what a site training on poisoned data can do [aggregator]")
    p.add_argument("--on-tamper", default=d.on_tamper, choices=ON_TAMPER,
                   help="a reply whose seal fails: reject its site for the round, or recover it bit-exactly "
                   "and accept it when within the recovery bound [on-tamper]")
    p.add_argument("--inject", action="append", default=[], metavar="KIND:CLIENT:ROUND",
                   help="inject a fault (repeatable); KIND: " + ", ".join(inject.KINDS) +
                   "; CLIENT is the partition id (0..clients-1) [inject]")
    p.add_argument("--dp", default=d.dp, metavar="SPEC",
                   help="differential privacy: 'sample:EPS,DELTA[,CLIP]' DP-SGD (Opacus) at each site, calibrated "
                   "so every site's epsilon stays <= EPS after all rounds; 'client:NOISE,CLIP[,DELTA]' sites clip "
                   "their update to norm CLIP, the server adds Gaussian noise NOISE x CLIP / sites [dp]")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in folder RUN after its last completed round, with its own settings "
                   "(other flags are ignored); results are identical to an uninterrupted run")
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/<timestamp>); must not exist or be empty [out-dir]")
    p.add_argument("--force", action="store_true",
                   help="reuse a non-empty --out folder, replacing FedSeal's records in it")
    p.add_argument("--verbose", action="store_true",
                   help="also show Flower/Ray log output (always written to simulation.log)")
    p.add_argument("--quiet", action="store_true",
                   help="no start line and no per-round progress: only the final table, the run folder and the "
                   "report (and errors). Without it: a live progress line when stdout is a terminal, one plain "
                   "line per round otherwise")
    p.add_argument("--no-report", action="store_true",
                   help="do not write report.html into the run folder at the end (see `fedseal report`)")
    p.set_defaults(handler=run)


def settings_from_args(args: argparse.Namespace) -> tuple[RunSettings, int]:
    """Validate flags into (RunSettings, number of sites); raise InputError on bad input."""
    if args.clients < 2:
        raise InputError(f"--clients must be at least 2, got {args.clients}")
    if args.rounds < 1:
        raise InputError(f"--rounds must be at least 1, got {args.rounds}")
    settings = RunSettings(
        dataset=args.dataset, num_rounds=args.rounds, local_epochs=args.local_epochs, lr=args.lr,
        batch_size=args.batch_size, partition=args.partition, seed=args.seed, secure_mode=args.secure_mode,
        min_clients=args.min_clients,
        aggregator=args.aggregator, on_tamper=args.on_tamper, inject=inject.to_text(inject.parse(args.inject)),
        dp=getattr(args, "dp", ""), round_timeout=args.round_timeout, clients=args.clients,
        clients_per_round=getattr(args, "clients_per_round", 0),
    )
    bad = [i for i in settings.injections if i.client >= args.clients]
    if bad:
        raise InputError(f"--inject {bad[0]}: client {bad[0].client} does not exist (clients are 0..{args.clients - 1})")
    late = [i for i in settings.injections if i.round > args.rounds]
    if late:
        raise InputError(f"--inject {late[0]}: round {late[0].round} never runs (--rounds {args.rounds})")
    n_train = len(load_split(settings.dataset).y_train)
    if args.clients > n_train:
        raise InputError(f"--clients {args.clients} is more than the {n_train} training examples of "
                         f"{settings.dataset}: every site needs at least one")
    if settings.min_clients > args.clients:  # (and > clients-per-round: RunSettings refuses it)
        raise InputError(f"--min-clients {settings.min_clients} is more than --clients {args.clients}")
    if settings.dp_spec is not None and settings.dp_spec.kind == "sample":
        from common.learning.dp import check_model

        check_model(settings.dataset)
    return settings, args.clients


def prepare_out_dir(out: str | None, force: bool) -> Path:
    """Create the run folder; refuse a non-empty one unless `force` (then clear FedSeal's records)."""
    folder = Path(out) if out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder}: exists and is not a folder")
    if not records.folder_is_free(folder):
        if not force:
            raise InputError(f"--out {folder}: folder exists and is not empty (use --force to reuse it)")
        for name in (records.SUMMARY, records.ROUNDS, records.AUDIT, records.MODEL, LOG_NAME, RUN_CONFIG,
                     records.PROGRESS, "report.html"):
            (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / records.CHECKPOINTS, ignore_errors=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {folder}: cannot create: {exc.strerror}") from None
    return folder.resolve()


def run(args: argparse.Namespace) -> int:
    """Handler of `fedseal simulate`."""
    if args.resume:
        folder, settings, clients = load_resumable(args.resume)
        _say(args, f"FedSeal simulate: resuming {folder}")
    else:
        settings, clients = settings_from_args(args)
        folder = prepare_out_dir(args.out, args.force)
        settings = settings.replace(out_dir=str(folder))
        records.atomic_write_json(folder / RUN_CONFIG, {"clients": clients, "run_config": settings.to_run_config()})
        _say(args, f"FedSeal simulate: {settings.dataset}, {clients} sites, {settings.num_rounds} rounds, "
             f"partition {settings.partition}, seed {settings.seed} -> {folder}")
    live = sys.stdout.isatty() and not getattr(args, "quiet", False)
    display = (progress.RichProgress(folder, settings.num_rounds, lambda rec: format_progress(rec, settings.num_rounds))
               if live else None)
    returncode = run_child(settings, clients, folder, verbose=args.verbose, out=sys.stdout, display=display,
                           quiet=getattr(args, "quiet", False))
    if returncode != 0:
        raise FedSealError(f"simulation failed (exit {returncode}): {last_error(folder / LOG_NAME)}; "
                           f"full log: {folder / LOG_NAME}")
    summary_path = folder / records.SUMMARY
    if not summary_path.exists():
        raise FedSealError(f"simulation ended without writing {summary_path}; see {folder / LOG_NAME}")
    summary = json.loads(summary_path.read_text())
    if sys.stdout.isatty():
        progress.print_rich_table(summary)
    else:
        print(format_table(summary), flush=True)
    print(f"Run folder: {folder}", flush=True)
    if not getattr(args, "no_report", False):
        from common.run.report import write_report

        try:
            print(f"Report: {write_report(folder)}", flush=True)
        except (ImportError, OSError, FedSealError) as exc:  # the run itself is complete
            print(f"fedseal: warning: report.html not written: {exc}", file=sys.stderr, flush=True)
    return 0


def _say(args: argparse.Namespace, line: str) -> None:
    if not getattr(args, "quiet", False):
        print(line, flush=True)


def load_resumable(path: str) -> tuple[Path, RunSettings, int]:
    """The folder, settings and site count of a run to resume; InputError if it cannot be."""
    folder = Path(path).resolve()
    try:
        saved = json.loads((folder / RUN_CONFIG).read_text())
        clients = int(saved["clients"])
        settings = RunSettings.from_run_config(saved["run_config"])
        settings = settings.replace(out_dir=str(folder), resume=True, clients=settings.clients or clients)
    except FileNotFoundError:
        raise InputError(f"--resume {path}: not a FedSeal run folder (no {RUN_CONFIG})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--resume {path}: {RUN_CONFIG} is damaged: {exc}") from None
    done = len(records.read_jsonl(folder / records.ROUNDS))
    if done >= settings.num_rounds and (folder / records.SUMMARY).exists():
        raise InputError(f"--resume {path}: the run already finished all {settings.num_rounds} rounds")
    (folder / records.SUMMARY).unlink(missing_ok=True)
    return folder, settings, clients


def run_child(settings: RunSettings, clients: int, folder: Path, *, verbose: bool, out: TextIO,
              display: Any = None, quiet: bool = False, client_app: str | None = None) -> int:
    """Run server/engine.py in its own session, stream progress (`display`, default: one plain line per
    round on `out`, none with `quiet`), always clean up. `client_app`: another ClientApp component
    for the sites (tests: a hostile one)."""
    display = display or progress.PlainProgress(out, lambda rec: format_progress(rec, settings.num_rounds),
                                                quiet=quiet)
    cmd = [sys.executable, "-m", "server.engine", "--num-supernodes", str(clients),
           "--run-config", json.dumps(settings.to_run_config()), *(["--client-app", client_app] if client_app else [])]
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      env.get("PYTHONPATH")]))
    processes.become_subreaper()
    rounds_path, log_path = folder / records.ROUNDS, folder / LOG_NAME
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    with open(log_path, "wb") as log, display:
        proc = processes.start_in_new_session(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            shown, log_pos = len(records.read_jsonl(rounds_path)), 0
            while True:
                done = proc.poll() is not None
                if verbose:
                    log_pos = _echo_log(log_path, log_pos)
                for rec in records.read_jsonl(rounds_path)[shown:]:
                    display.round_done(rec)
                    shown += 1
                display.tick()
                if done:
                    return proc.returncode
                time.sleep(POLL_SECONDS)
        finally:
            processes.stop_session(proc)
            processes.reap_children()
            signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM: clean up exactly like Ctrl-C


def _echo_log(log_path: Path, pos: int) -> int:
    """Copy new bytes of the child's log to stderr (--verbose); return the new position."""
    with open(log_path, "rb") as fh:
        fh.seek(pos)
        chunk = fh.read()
    if chunk:
        sys.stderr.write(chunk.decode(errors="replace"))
        sys.stderr.flush()
    return pos + len(chunk)


def last_error(log_path: Path) -> str:
    """The last line of the log that looks like an error (for a one-line failure message)."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if "Error" in ln or "ERROR" in ln or "Exception" in ln]
    return (errors or lines or ["no output"])[-1][:300]


def format_progress(rec: dict[str, Any], num_rounds: int) -> str:
    """One progress line: round, accuracy, loss, seconds."""
    line = (f"round {rec['round']:>3}/{num_rounds}  accuracy {rec['accuracy']:.4f}  loss {rec['loss']:.4f}  "
            f"{rec['seconds']:6.1f} s  sites {rec['clients_used']}")
    if rec.get("rejected"):
        line += f"  rejected {','.join(map(str, rec['rejected']))}"
    if rec.get("recovered"):
        line += "  recovered " + ",".join(f"{r['client']}:{r['what']}" for r in rec["recovered"])
    if rec.get("epsilon"):
        line += f"  epsilon max {max(rec['epsilon'].values()):.3f}"
    return line


def format_table(summary: dict[str, Any]) -> str:
    """The final table: every round, then final vs centralized accuracy."""
    head = f"{'round':>5}  {'accuracy':>8}  {'loss':>7}  {'seconds':>7}  {'KB up':>8}  {'KB down':>8}  " \
           f"{'sites':>5}  {'rejected':>8}"
    rows = [head, "-" * len(head)]
    for r in summary["rounds"]:
        rows.append(f"{r['round']:>5}  {r['accuracy']:>8.4f}  {r['loss']:>7.4f}  {r['seconds']:>7.1f}  "
                    f"{r['bytes_up'] / 1024:>8.1f}  {r['bytes_down'] / 1024:>8.1f}  {r['clients_used']:>5}  "
                    f"{len(r['rejected']):>8}")
    rows.append("-" * len(head))
    if "clients_registered" in summary:
        rows.append(progress.sites_line(summary))
    gap = 100 * (summary["final_accuracy"] - summary["centralized_accuracy"])
    rows.append(f"final accuracy {summary['final_accuracy']:.4f}   centralized {summary['centralized_accuracy']:.4f}   "
                f"difference {gap:+.2f} points   ({summary['test_examples']} test examples)")
    if summary.get("epsilon_max") is not None:
        rows.append(f"differential privacy {summary['dp']}: epsilon max {summary['epsilon_max']:.3f} per "
                    f"{summary['dp_unit']} at delta {summary['delta']:g}")
    return "\n".join(rows)
