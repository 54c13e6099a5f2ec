"""A complete secured FedSeal federation on 127.0.0.1 with Flower's Deployment Engine.

What a coordinator and N sites would run on N + 1 machines, here on one (`scripts/deploy-local.sh`):

- coordinator: a CA and a server certificate (`fedseal certs tls`), the federation keys
  (`fedseal keys init`), a SuperExec secret; `flower-superlink` with TLS,
  `--enable-supernode-auth`, `--isolation process` and `--superexec-auth-secret-file`, plus the
  `flower-superexec` that claims its ServerApp tasks with that secret; `flwr supernode register`
  for each site's public key; `flwr run` with the run config.
- each site: its authentication key pair (`fedseal certs node-key`), its data CSV, its key folder
  (`DIR/clients/<id>`), its own SuperExec secret; `flower-supernode` with `--root-certificates`,
  its private key, `--isolation process` and node config `data-path`, `keys-dir`, `client-id`,
  plus its own `flower-superexec` for its ClientApp tasks.

The server gets no site's path or data: data and keys reach a site's ClientApp only through
that site's node config. Every process is started in its own session and stopped by PID
(`common.processes.stop_session`), whatever ends the deployment. `write_kit` writes the same
commands as one folder per machine, `DIR/kit/coordinator/` and `DIR/kit/site-<id>/`, each with
exactly that machine's files and a `commands.sh` (common/launch/kit.py). No Flower import here:
this module only runs Flower's command-line programs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from common.errors import FedSealError, InputError
from common.integrity import certs
from common.integrity.keys import client_dir, init_federation, server_dir
from common.launch import kit
from common.launch.kit import CONNECTION, LABEL_COLUMN
from common.learning.data import dataset_info, feature_names, partition_indices, train_test_indices, write_csv
from common.processes import session_members, start_in_new_session, stop_session
from common.run import federated_eval, records

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT = 90.0
POLL = 0.5


class DeployError(FedSealError):
    """A part of the deployment failed (exit status 1); the message names its log."""


class RunFailed(DeployError):
    """One run ended without summary.json (or was stopped after its timeout); the deployment is fine."""


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (bound together, then released)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def write_site_csvs(dataset: str, sites: int, partition: str, seed: int, paths: list[Path]) -> list[int]:
    """Write site i's share of the dataset's training split to `paths[i]`; return the row counts.

    The shares are exactly the simulation's partitions (`common.learning.data.load_partition(dataset, i,
    sites, partition, seed)`), written in the dataset's own units with its feature names and the
    label in column `label`: what a site really holds. Each site standardizes its own file.
    """
    from sklearn import datasets  # lazily: slow to import

    info = dataset_info(dataset)
    bunch = datasets.load_breast_cancer() if dataset == "breast-cancer" else datasets.load_digits()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    train, _ = train_test_indices(y)
    names = feature_names(dataset)  # the header a site CSV of this dataset must have (checked by name)
    assert len(names) == info.n_features
    counts = []
    for path, part in zip(paths, partition_indices(y[train], sites, partition, seed)):
        rows = train[part]
        write_csv(path, x[rows], y[rows], LABEL_COLUMN, names)
        counts.append(len(rows))
    return counts


def _toml_str(value: str | Path) -> str:
    text = str(value)
    if any(ch in text for ch in '"\\\n'):
        raise InputError(f"path {text!r} must not contain quotes, backslashes or newlines")
    return f'"{text}"'


@dataclass
class Proc:
    """A process the deployment started: its role, Popen handle and log file."""

    name: str
    popen: subprocess.Popen
    log: Path
    expected_exit: bool = False  # killed on purpose (a test) or a one-shot command

    def tail(self, lines: int = 25) -> str:
        """The last lines of its log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Site:
    """One site (SuperNode): its id, folder, ports and files."""

    id: str
    folder: Path
    keys_dir: Path
    port: int  # its SuperNode's runtime API (127.0.0.1 only), where its SuperExec connects
    node_id: int | None = None
    procs: list[Proc] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.folder / "site.csv"

    @property
    def auth_key(self) -> Path:
        return self.folder / certs.NODE_KEY

    @property
    def auth_pub(self) -> Path:
        return self.folder / certs.NODE_PUB

    @property
    def secret(self) -> Path:
        return self.folder / "superexec.secret"

    def node_config(self) -> str:
        """Its node config: where its data and keys are, and its id (the server learns none of it)."""
        _toml_str(self.data), _toml_str(self.keys_dir), _toml_str(self.id)  # no quote can break the TOML
        return kit.node_config(str(self.data), str(self.keys_dir), self.id)


@dataclass
class RunHandle:
    """A `flwr run` in progress: its run folder and the streaming `flwr run` process."""

    folder: Path
    proc: Proc
    started: float


class Deployment:
    """A SuperLink and N SuperNodes on 127.0.0.1 in folder `root` (see the module docstring).

    Use as a context manager, or call `stop()`: it stops every process started, by PID.
    Layout: `coordinator/` (tls/, superexec.secret, flwr-home/, logs), `keys/` (from `fedseal
    keys init`: server/ stays with the coordinator, clients/<id>/ goes to site <id>),
    `sites/<id>/` (site.csv, auth.key, auth.pub, superexec.secret, flwr-home/, logs),
    `runs/<name>/` (run folders), `kit/` (`write_kit`: one folder per machine).
    """

    def __init__(self, root: str | Path, clients: int, *, dataset: str = "breast-cancer",
                 partition: str = "iid", seed: int = 0, say=print) -> None:
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 2:
            raise InputError(f"--clients must be a whole number >= 2, got {clients!r}")
        dataset_info(dataset)
        self.root = Path(root).resolve()
        _toml_str(self.root)
        self.clients, self.dataset, self.partition, self.seed, self.say = clients, dataset, partition, seed, say
        self.coordinator = self.root / "coordinator"
        self.tls = self.coordinator / "tls"
        self.keys = self.root / "keys"
        self.procs: list[Proc] = []
        self.port = 0
        self.sites: list[Site] = []

    # --- context manager -------------------------------------------------------------------

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- files ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make every credential, key and data file (nothing runs yet). The folder must be new or empty."""
        if self.root.exists() and any(self.root.iterdir()):
            raise InputError(f"{self.root} exists and is not empty; choose a new deployment folder")
        self.root.mkdir(parents=True, exist_ok=True)
        ports = free_ports(self.clients + 1)
        self.port = ports[0]
        self.coordinator.mkdir()
        certs.make_tls(self.tls, ("127.0.0.1", "localhost"))
        certs.make_secret(self.coordinator / "superexec.secret")
        init_federation(self.keys, self.clients)
        self.sites = [Site(str(i), self.root / "sites" / str(i), client_dir(self.keys, str(i)), ports[i + 1])
                      for i in range(self.clients)]
        for site in self.sites:
            self._site_credentials(site)
        counts = write_site_csvs(self.dataset, self.clients, self.partition, self.seed, [s.data for s in self.sites])
        home = self.coordinator / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(kit.connection_toml(self.port, _toml_str(self.tls / certs.CA_CERT)[1:-1]),
                                          encoding="utf-8")
        (self.root / "runs").mkdir()
        self.say(f"credentials, keys and site data in {self.root} (rows per site: {counts})")

    # --- processes ------------------------------------------------------------------------

    def _env(self, home: Path) -> dict[str, str]:
        return dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                    FLWR_TELEMETRY_ENABLED="0", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    PYTHONUNBUFFERED="1")

    def write_kit(self, runs: list[tuple[str, dict[str, object]]]) -> Path:
        """DIR/kit/: one folder per machine with its files and a commands.sh that runs from there
        (common/launch/kit.py); the coordinator's submits `runs` ((run name, run config) each)."""
        folder = self.root / kit.KIT
        folder.mkdir()
        kit.write_coordinator(folder, tls=self.tls, secret=self.coordinator / "superexec.secret",
                              server_keys=server_dir(self.keys), site_pubs={s.id: s.auth_pub for s in self.sites},
                              port=self.port, bin_dir=BIN, app=ROOT,
                              runs=[(name, " ".join(f"{k}={_toml_value(v)}" for k, v in config.items()))
                                    for name, config in runs])
        for site in self.sites:
            kit.write_site(folder, site.id, ca=self.tls / certs.CA_CERT, auth_key=site.auth_key,
                           auth_pub=site.auth_pub, secret=site.secret, keys=site.keys_dir, data=site.data,
                           superlink_port=self.port, port=site.port, bin_dir=BIN)
        return folder

    def _spawn(self, name: str, cmd: list[str], home: Path, log: Path) -> Proc:
        cmd = [str(BIN / cmd[0]), *cmd[1:]]  # Flower's programs of this interpreter's environment
        with log.open("ab") as out, _deferred_signals():  # a Ctrl-C lands once the process is in self.procs
            popen = start_in_new_session(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self._env(home), cwd=self.root)
            proc = Proc(name, popen, log)
            self.procs.append(proc)
        return proc

    def _flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a one-shot `flwr` command as the coordinator; raise DeployError if it fails."""
        return self._flwr_many([list(args)], timeout=timeout)[0]

    def _flwr_many(self, commands: list[list[str]], timeout: float = 60.0) -> list[subprocess.CompletedProcess]:
        """Run several one-shot `flwr` commands at once (each costs seconds of CPU to start);
        raise DeployError naming the first that failed."""
        running = []
        done = []
        try:
            with _deferred_signals():  # a Ctrl-C meanwhile lands after every process is in `running`
                for args in commands:
                    cmd = [str(BIN / "flwr"), *args]
                    running.append((args, subprocess.Popen(
                        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                        env=self._env(self.coordinator / "flwr-home"), stdin=subprocess.DEVNULL)))
            for args, popen in running:
                what = f"`flwr {' '.join(args[:2])}`"
                try:
                    out, err = popen.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    raise DeployError(f"{what} did not finish in {timeout:.0f} s") from None
                if popen.returncode != 0:
                    raise DeployError(f"{what} failed ({popen.returncode}): {(out + err).strip()[-1500:]}")
                if (failure := flwr_failure(out)) is not None:  # exit 0, yet "success": false
                    raise DeployError(f"{what} failed: {failure}")
                done.append(subprocess.CompletedProcess(popen.args, popen.returncode, out, err))
        finally:
            for _, popen in running:
                if popen.poll() is None:
                    popen.kill()
                    popen.wait()
        return done

    def check_alive(self) -> None:
        """Raise DeployError naming the first started process that exited unexpectedly, with its log."""
        for proc in self.procs:
            if not proc.expected_exit and proc.popen.poll() is not None:
                raise DeployError(f"{proc.name} exited with status {proc.popen.returncode}; "
                                  f"its log {proc.log} ends:\n{proc.tail()}")

    def health(self) -> bool:
        """True when the SuperLink answers GET /health over TLS (trusting only our CA)."""
        context = ssl.create_default_context(cafile=str(self.tls / certs.CA_CERT))
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/health", timeout=2, context=context) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait(self, what: str, ready, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise DeployError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(POLL)

    def start_superlink(self) -> None:
        """Start the SuperLink (TLS, node auth, process isolation, SuperExec secret) and its SuperExec."""
        tls, secret = self.tls, self.coordinator / "superexec.secret"
        home = self.coordinator / "flwr-home"
        self._spawn("SuperLink", kit.superlink(str(tls), str(secret), self.port), home,
                    self.coordinator / "superlink.log")
        self._wait(f"the SuperLink's /health on 127.0.0.1:{self.port}", self.health)
        self._spawn("SuperLink's SuperExec", kit.server_superexec(self.port, str(tls / certs.CA_CERT), str(secret)),
                    home, self.coordinator / "superexec.log")
        self.say(f"SuperLink on https://127.0.0.1:{self.port} (TLS, SuperNode auth, process isolation)")

    def register(self, *sites: Site) -> list[int]:
        """`flwr supernode register` each site's public key (all at once); return the node ids
        the SuperLink gave them (also kept in `site.node_id`)."""
        answers = self._flwr_many([kit.register(str(site.auth_pub), site.id)[1:] for site in sites])
        for site, done in zip(sites, answers):
            try:
                site.node_id = int(json.loads(done.stdout[done.stdout.index("{"):])["node-id"])
            except (ValueError, KeyError) as exc:
                raise DeployError(f"unexpected answer from `flwr supernode register`: {done.stdout[-500:]}") from exc
        return [site.node_id for site in sites]

    def unregister(self, site: Site) -> None:
        """`flwr supernode unregister` the site's node: its running SuperNode stops, and the
        SuperLink refuses its key from then on (removing a site)."""
        self._flwr("supernode", "unregister", str(site.node_id), CONNECTION)

    def start_site(self, site: Site) -> None:
        """Start the site's SuperNode (its node config, TLS trusting our CA, its auth key) and its SuperExec."""
        home = site.folder / "flwr-home"
        node = self._spawn(f"SuperNode {site.id}", kit.supernode(
            f"127.0.0.1:{self.port}", str(self.tls / certs.CA_CERT), str(site.auth_key), site.node_config(),
            str(site.secret), site.port), home, site.folder / "supernode.log")
        execu = self._spawn(f"SuperNode {site.id}'s SuperExec", kit.site_superexec(site.port, str(site.secret)),
                            home, site.folder / "superexec.log")
        site.procs = [node, execu]

    def nodes(self) -> dict[int, str]:
        """{node id: status} as the SuperLink lists them (`flwr supernode list`)."""
        done = self._flwr("supernode", "list", CONNECTION, "--format", "json")
        listed = json.loads(done.stdout[done.stdout.index("{"):]).get("nodes", [])
        return {int(n["node-id"]): str(n["status"]) for n in listed}

    def start(self) -> None:
        """Start the SuperLink, register and start every site, wait until every site is online."""
        self.start_superlink()
        self.register(*self.sites)
        for site in self.sites:
            self.start_site(site)
        self._wait("every SuperNode to connect", lambda: all(
            "SuperNode ID:" in _read(s.folder / "supernode.log") for s in self.sites))
        self._wait("every SuperNode to be online", lambda: all(
            self.nodes().get(s.node_id) == "online" for s in self.sites), timeout=30)
        self.say(f"{len(self.sites)} SuperNodes online: " + ", ".join(f"site {s.id} = node {s.node_id}"
                                                                     for s in self.sites))

    def _site_credentials(self, site: Site) -> None:
        """What a site makes for itself: its authentication key pair and its SuperExec secret."""
        certs.make_node_key(site.folder, comment=f"site-{site.id}")
        certs.make_secret(site.secret)
        (site.folder / "flwr-home").mkdir()

    def new_site(self, site_id: str, keys_dir: Path) -> Site:
        """A site folder with a fresh authentication key pair and SuperExec secret, not registered
        and not started (to add a site: `register` it, then `start_site`)."""
        site = Site(site_id, self.root / "sites" / site_id, keys_dir, free_ports(1)[0])
        if site.folder.exists():
            raise InputError(f"{site.folder} exists already")
        self._site_credentials(site)
        return site

    def kill_site(self, site: Site) -> None:
        """SIGKILL a site's SuperNode and SuperExec (and any ClientApp they started), as a crashed
        machine goes: nothing is told to the SuperLink."""
        for proc in site.procs:
            proc.expected_exit = True
            for pid in session_members(proc.popen.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in site.procs:
            stop_session(proc.popen, grace=2.0)  # reaps it; catches anything that survived

    # --- runs -----------------------------------------------------------------------------

    def start_run(self, name: str, run_config: dict[str, object]) -> RunHandle:
        """Submit a run with `flwr run` (streaming its log); its run folder is runs/<name>."""
        folder = self.root / "runs" / name
        if folder.exists():
            raise InputError(f"run folder {folder} exists already")
        config = {"out-dir": str(folder), "keys-dir": str(self.keys), **run_config}
        pairs = " ".join(f"{key}={_toml_value(value)}" for key, value in config.items())
        cmd = ["flwr", "run", str(ROOT), CONNECTION, "--stream", "--run-config", pairs]
        log = self.coordinator / f"flwr-run-{name}.log"
        proc = self._spawn(f"flwr run {name}", cmd, self.coordinator / "flwr-home", log)
        proc.expected_exit = True
        return RunHandle(folder, proc, time.monotonic())

    def wait_run(self, handle: RunHandle, timeout: float = 900.0) -> dict:
        """Wait until the run folder has summary.json; return it. Raise DeployError if the run
        ends without one, a deployment process dies, or `timeout` seconds pass."""
        summary = handle.folder / records.SUMMARY
        deadline = handle.started + timeout
        ended_at = None
        while not summary.exists():
            self.check_alive()
            if ended_at is None and handle.proc.popen.poll() is not None:
                ended_at = time.monotonic()  # the stream ends with the run: give the file a moment
            if ended_at is not None and time.monotonic() - ended_at > 10:
                raise RunFailed(f"the run ended without {summary}; `flwr run` log {handle.proc.log} ends:\n"
                                f"{handle.proc.tail(40)}")
            if time.monotonic() > deadline:
                self.stop_run(handle)
                raise RunFailed(f"no {summary} after {timeout:.0f} s, run stopped; `flwr run` log: {handle.proc.log}")
            time.sleep(POLL)
        return json.loads(summary.read_text())  # written atomically by the server

    def run_id(self, handle: RunHandle) -> int | None:
        """The run id `flwr run` printed, if it did."""
        match = re.search(r"started run (\d+)", _read(handle.proc.log))
        return int(match.group(1)) if match else None

    def stop_run(self, handle: RunHandle) -> None:
        """Ask the SuperLink to stop the run (`flwr stop`), so the next one does not queue behind it."""
        if (run_id := self.run_id(handle)) is not None:
            try:
                self._flwr("stop", str(run_id), CONNECTION)
            except DeployError as exc:
                self.say(f"could not stop run {run_id}: {exc}")
        stop_session(handle.proc.popen, grace=2.0)

    def stop(self) -> None:
        """Stop every process this deployment started, newest first, by PID (SIGTERM, then SIGKILL).

        Ctrl-C and SIGTERM are held off meanwhile (in the main thread), so a second Ctrl-C
        cannot leave a process behind.
        """
        held = _hold_signals()
        try:
            while self.procs:
                proc = self.procs.pop()
                stop_session(proc.popen, grace=5.0)
        finally:
            _restore_signals(held)




def _hold_signals() -> dict:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(held: dict) -> None:
    for sig, handler in held.items():
        signal.signal(sig, handler)


@contextlib.contextmanager
def _deferred_signals():
    """Ctrl-C and SIGTERM wait until the block is done, then raise KeyboardInterrupt: a process
    started in the block is always recorded before the interrupt can stop the recording."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
            for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        _restore_signals(held)
    if caught:
        raise KeyboardInterrupt


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def flwr_failure(stdout: str) -> str | None:
    """Flower's error message when a `flwr ... --format json` answer says "success": false, else None."""
    try:
        answer = json.loads(stdout[stdout.index("{"):])
    except ValueError:
        return None
    if isinstance(answer, dict) and answer.get("success") is False:
        return " ".join(str(answer.get("error-message", answer)).split())
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _toml_str(str(value))


# --- command line -----------------------------------------------------------------------------


def _modes() -> tuple[str, ...]:
    from common.run.settings import SECURE_MODES

    return tuple(SECURE_MODES)


def build_parser() -> argparse.ArgumentParser:
    """The options of scripts/deploy-local.sh."""
    p = argparse.ArgumentParser(
        prog="deploy-local.sh",
        description="Run a complete secured FedSeal federation on 127.0.0.1 with Flower's Deployment Engine: "
        "a CA and TLS certificates, the federation keys, SuperNode authentication keys, one SuperLink (TLS, "
        "--enable-supernode-auth, --isolation process, SuperExec secret) and N SuperNodes, each with its own "
        "data CSV and key folder in its node config; one `flwr run`; every process stopped by PID at the end "
        "(also on failure or Ctrl-C). DIR/kit/ holds one folder per machine (coordinator, site-<id>) with "
        "exactly its files and a commands.sh that runs from that folder.",
    )
    p.add_argument("--mode", default="none", metavar="|".join(_modes()),
                   help="secure mode (run-config secure-mode); a comma-separated list or `all` runs one "
                   "federation per mode on the same deployment (default: %(default)s)")
    p.add_argument("--clients", type=int, default=3, metavar="N",
                   help="sites (SuperNodes), >= 2 (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, metavar="R", help="federated rounds, >= 1 (default: %(default)s)")
    p.add_argument("--min-clients", type=int, default=None, metavar="M",
                   help="fewest accepted replies that update the model (default: N)")
    p.add_argument("--dataset", default="breast-cancer", choices=("breast-cancer", "digits"),
                   help="bundled dataset cut into the site CSVs (default: %(default)s)")
    p.add_argument("--partition", default="iid",
                   help="iid or dirichlet:ALPHA, as in fedseal simulate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the partition and the run (default: %(default)s)")
    p.add_argument("--run-config", default="", metavar="'K=V ...'",
                   help="more run-config pairs, e.g. 'local-epochs=3 round-timeout=30'")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="deployment folder, new or empty (default: runs/deploy-<timestamp>)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds to wait for the run to finish (default: %(default)s)")
    return p


def _parse_pairs(text: str) -> dict[str, object]:
    import tomllib

    try:
        return dict(tomllib.loads("\n".join(text.split())))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"--run-config {text!r}: not KEY=VALUE pairs in TOML syntax ({exc})") from None


def parse_modes(text: str) -> list[str]:
    """`none`, `he,masked` or `all` -> the secure modes to run, each one that exists (InputError otherwise)."""
    known = _modes()
    modes = list(known) if text == "all" else [m.strip() for m in text.split(",")]
    for mode in modes:
        if mode not in known:
            raise InputError(f"unknown --mode {mode!r}; choose from {', '.join(known)} (comma-separated), or all")
    if len(set(modes)) != len(modes):
        raise InputError(f"--mode {text!r} names a mode twice")
    return modes


def main(argv: list[str] | None = None) -> int:
    """Entry point of scripts/deploy-local.sh: exit 0 when every run finished, 1 if one failed,
    2 on bad usage, 130 on Ctrl-C or SIGTERM."""
    args = build_parser().parse_args(argv)
    # Ctrl-C stops the deployment even when a background job started us with SIGINT ignored (Python
    # then installs no KeyboardInterrupt handler of its own); a SIGTERM stops it the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    say = lambda text: print(f"deploy-local: {text}", flush=True)  # noqa: E731
    try:
        modes = parse_modes(args.mode)
        if args.clients < 2:
            raise InputError(f"--clients must be at least 2, got {args.clients}")
        if args.rounds < 1:
            raise InputError(f"--rounds must be at least 1, got {args.rounds}")
        min_clients = args.clients if args.min_clients is None else args.min_clients
        if not 1 <= min_clients <= args.clients:
            raise InputError(f"--min-clients must be between 1 and --clients ({args.clients}), got {min_clients}")
        from common.learning.data import parse_partition

        parse_partition(args.partition)
        extra = _parse_pairs(args.run_config)
        folder = Path(args.dir or ROOT / "runs" / f"deploy-{datetime.now():%Y%m%d-%H%M%S}")
        started = time.monotonic()
        results: list[tuple[str, Path, dict | None]] = []
        if args.timeout <= 0:
            raise InputError(f"--timeout must be > 0 seconds, got {args.timeout}")
        with Deployment(folder, args.clients, dataset=args.dataset, partition=args.partition, seed=args.seed,
                        say=say) as dep:
            dep.prepare()

            def run_of(mode: str) -> tuple[str, dict[str, object]]:
                return f"{mode}-{args.clients}x{args.rounds}", {
                    "secure-mode": mode, "num-rounds": args.rounds, "min-clients": min_clients,
                    "dataset": args.dataset, "seed": args.seed, "partition": args.partition, **extra}

            kit_dir = dep.write_kit([run_of(mode) for mode in modes])
            say(f"one folder per machine in {kit_dir}: run {kit_dir / kit.COORDINATOR / kit.COMMANDS}, then each "
                f"{kit_dir}/site-<id>/{kit.COMMANDS}")
            dep.start()

            def submit(mode: str) -> RunHandle:
                handle = dep.start_run(*run_of(mode))
                say(f"flwr run submitted (secure-mode {mode}, {args.rounds} rounds); log {handle.proc.log}")
                return handle

            for mode in modes:
                handle = submit(mode)
                try:
                    summary = dep.wait_run(handle, timeout=args.timeout)
                except RunFailed as exc:
                    say(f"secure-mode {mode}: FAILED: {exc}")
                    results.append((mode, handle.folder, None))
                    continue
                if summary.get("status") == "stopped":  # the server could not make progress
                    say(f"secure-mode {mode}: STOPPED: {summary.get('reason')}")
                    results.append((mode, handle.folder, None))
                    continue
                say(f"secure-mode {mode}: final {federated_eval.describe(summary.get('final_federated_eval') or {})}")
                results.append((mode, handle.folder, summary))
            say("stopping every process")
        for mode, run_folder, summary in results:
            if summary is None:
                print(f"{mode:7s} FAILED (see {run_folder} and {folder / 'coordinator'})")
            else:
                fed = summary.get("final_federated_eval") or {}
                print(f"{mode:7s} final federated accuracy {fed.get('accuracy', float('nan')):.4f} over "
                      f"{fed.get('examples', 0)} site validation examples   Run folder: {run_folder}")
        print(f"Deployment folder: {folder} ({time.monotonic() - started:.0f} s)")
        return 0 if all(summary is not None for *_, summary in results) else 1
    except FedSealError as exc:
        print(f"deploy-local: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("deploy-local: interrupted; every process it started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
