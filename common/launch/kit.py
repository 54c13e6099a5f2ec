"""Flower's command lines for each machine of a deployment, and the kit: one folder per machine.

`scripts/deploy-local.sh` (common/launch/deploy_local.py) runs these commands itself, and writes
`DIR/kit/coordinator/` and `DIR/kit/site-<id>/`: each holds exactly the files that machine needs
and a `commands.sh` that runs from that folder (every path relative to it), so a folder copied
to a real machine runs as written once `SUPERLINK` (sites) or `FEDSEAL_APP` (coordinator) say
where things are there.

- coordinator: tls/ (ca.pem, server.pem, server.key; not the CA's private key), superexec.secret,
  keys/server/ (the federation's server keys), site-keys/<id>.pub (each site's SuperNode public
  key, to register), flwr-home/config.toml (the `fedseal-local` SuperLink connection).
- site <id>: ca.pem, auth.key, auth.pub, superexec.secret, keys/ (its `keys init` folder),
  site.csv (its data; it never leaves the site).

A `flwr` command whose JSON answer says `"success": false` (it still exits 0) fails the script
with Flower's message. No Flower import here: only Flower's command-line programs.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from common.integrity import certs

CONNECTION = "fedseal-local"  # the SuperLink connection name in the coordinator's FLWR_HOME
LABEL_COLUMN = "label"
KIT = "kit"
COORDINATOR = "coordinator"
COMMANDS = "commands.sh"
SITE_KEYS = "site-keys"  # coordinator: the sites' SuperNode public keys
PIDS = "pids"  # what commands.sh started in the background, one PID a line


# --- the command lines (paths as the caller gives them: absolute live, relative in the kit) -------


def superlink(tls: str, secret: str, port: int) -> list[str]:
    """The SuperLink: TLS, SuperNode authentication, process isolation, the SuperExec secret."""
    return ["flower-superlink", "--ssl-ca-certfile", f"{tls}/{certs.CA_CERT}",
            "--ssl-certfile", f"{tls}/{certs.SERVER_CERT}", "--ssl-keyfile", f"{tls}/{certs.SERVER_KEY}",
            "--enable-supernode-auth", "--isolation", "process", "--superexec-auth-secret-file", secret,
            "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port)]


def server_superexec(port: int, ca: str, secret: str) -> list[str]:
    """The coordinator's SuperExec, which runs the ServerApp."""
    return ["flower-superexec", "--runtime-api-address", f"127.0.0.1:{port}", "--root-certificates", ca,
            "--superexec-auth-secret-file", secret]


def supernode(link: str, ca: str, auth_key: str, node_config: str, secret: str, port: int) -> list[str]:
    """A site's SuperNode: it connects out to the SuperLink, trusting only the federation's CA."""
    return ["flower-supernode", "--superlink", link, "--root-certificates", ca,
            "--auth-supernode-private-key", auth_key, "--node-config", node_config,
            "--isolation", "process", "--superexec-auth-secret-file", secret, "--host", "127.0.0.1",
            "--port", str(port)]


def site_superexec(port: int, secret: str) -> list[str]:
    """A site's SuperExec, which runs its ClientApp (on the site's own loopback)."""
    return ["flower-superexec", "--runtime-api-address", f"127.0.0.1:{port}", "--insecure",
            "--superexec-auth-secret-file", secret]


def register(pub: str, site_id: str) -> list[str]:
    """`flwr supernode register`: the SuperLink accepts this site's SuperNode key from now on."""
    return ["flwr", "supernode", "register", pub, CONNECTION, "--name", f"site-{site_id}", "--format", "json"]


def node_config(data: str, keys_dir: str, site_id: str) -> str:
    """A site's node config: where its data and keys are, and its id (the server learns none of it)."""
    return (f'data-path="{data}" label-column="{LABEL_COLUMN}" keys-dir="{keys_dir}" client-id="{site_id}"')


def connection_toml(port: int, ca: str) -> str:
    """The coordinator's flwr-home/config.toml: the `fedseal-local` connection to its SuperLink."""
    return (f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{port}"\nroot-certificates = "{ca}"\n')


# --- the kit --------------------------------------------------------------------------------------

_HEAD = """#!/usr/bin/env bash
# {title}
# Run it from anywhere: it works in its own folder, and every path below is relative to it.
# Background processes go to *.log here; their PIDs to ./{pids} (stop them: kill $(cat {pids})).
set -euo pipefail
cd "$(dirname "$0")"
export PATH="${{FEDSEAL_BIN:-{bin}}}:$PATH"  # where fedseal and Flower's programs are installed
export FLWR_HOME="$PWD/flwr-home" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0
"""

_FLWR_JSON = """
# A flwr command whose JSON says "success": false exits 0 all the same: fail with Flower's message.
flwr_json() {
    local out
    out="$("$@")" || { printf '%s\\n' "$out" >&2; return 1; }
    printf '%s\\n' "$out" | python -c 'import json, sys
text = sys.stdin.read()
answer = json.loads(text[text.index("{"):])
if answer.get("success") is False:
    sys.exit("flwr: " + " ".join(str(answer.get("error-message", answer)).split()))'
}
"""


def _line(cmd: list[str], log: str | None = None) -> str:
    """One shell line; with `log`, started in the background with its PID kept in ./pids."""
    text = " ".join(_quote(part) for part in cmd)
    return f"{text} > {log} 2>&1 &\necho $! >> {PIDS}\n" if log else text + "\n"


def _quote(part: str) -> str:
    """Shell-quote; a part naming a variable ($PWD, $SUPERLINK) is double-quoted so the shell expands it."""
    if "$" not in part:
        return shlex.quote(part)
    return '"' + part.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)  # copy2: file modes (0600 keys) are kept
    else:
        shutil.copy2(src, dst)


def _script(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)


def write_coordinator(kit: Path, *, tls: Path, secret: Path, server_keys: Path, site_pubs: dict[str, Path],
                      port: int, bin_dir: Path, app: Path, runs: list[tuple[str, str]]) -> Path:
    """kit/coordinator/: its files and commands.sh (SuperLink, SuperExec, register the sites, then
    each of `runs` ((run name, run-config pairs) each) with `flwr run` and a check that it finished)."""
    folder = kit / COORDINATOR
    for name in (certs.CA_CERT, certs.SERVER_CERT, certs.SERVER_KEY):
        _copy(tls / name, folder / "tls" / name)
    _copy(secret, folder / "superexec.secret")
    _copy(server_keys, folder / "keys" / "server")
    for site_id, pub in site_pubs.items():
        _copy(pub, folder / SITE_KEYS / f"{site_id}.pub")
    (folder / "flwr-home").mkdir()
    (folder / "flwr-home" / "config.toml").write_text(connection_toml(port, str(folder / "tls" / certs.CA_CERT)),
                                                     encoding="utf-8")
    health = ('python -c \'import ssl, urllib.request; urllib.request.urlopen("https://127.0.0.1:%d/health", '
              'timeout=2, context=ssl.create_default_context(cafile="tls/%s"))\'' % (port, certs.CA_CERT))
    text = _HEAD.format(title="FedSeal coordinator: the SuperLink, its SuperExec, the sites' registration, the runs.",
                        pids=PIDS, bin=bin_dir)
    text += f'FEDSEAL_APP="${{FEDSEAL_APP:-{app}}}"  # the FedSeal app folder (its pyproject.toml)\n'
    text += _FLWR_JSON
    text += ("\n# The `fedseal-local` connection of every flwr command below (Flower wants an absolute path to\n"
             "# the CA certificate: this folder's, wherever the folder is now)\n"
             f"cat > flwr-home/config.toml <<EOF\n{connection_toml(port, '$PWD/tls/' + certs.CA_CERT)}EOF\n")
    text += "\n# 1. The SuperLink (opens port %d to the sites) and the SuperExec that runs the ServerApp\n" % port
    text += _line(superlink("tls", "superexec.secret", port), "superlink.log")
    text += f"for _ in $(seq 90); do {health} 2>/dev/null && break; sleep 1; done\n"
    text += _line(server_superexec(port, f"tls/{certs.CA_CERT}", "superexec.secret"), "superexec.log")
    text += "\n# 2. Register each site's SuperNode key (the sites send their auth.pub)\n"
    for site_id in site_pubs:
        text += "flwr_json " + _line(register(f"{SITE_KEYS}/{site_id}.pub", site_id))
        text += f'echo "site {site_id} registered"\n'
    text += "mkdir -p runs\n"
    for number, (name, pairs) in enumerate(runs, start=3):
        out = f'"$PWD/runs/{name}"'
        text += f"\n# {number}. Run {name} (the ServerApp waits for the sites); its records go to runs/{name}/\n"
        pairs = f'out-dir="$PWD/runs/{name}" keys-dir="$PWD/keys" {pairs}'.strip()
        text += _line(["flwr", "run", "$FEDSEAL_APP", CONNECTION, "--stream", "--run-config", pairs])
        text += ("# Did it finish? (summary.json: status finished, or stopped with the reason)\n"
                 "python -c 'import json, sys; s = json.load(open(sys.argv[1])); "
                 "sys.exit(None if s.get(\"status\") == \"finished\" else \"run \" + str(s.get(\"status\")) + \": \" "
                 f"+ str(s.get(\"reason\")))' {out}/summary.json\n"
                 f'echo "run {name} finished: runs/{name}/summary.json, runs/{name}/report.html"\n')
    _script(folder / COMMANDS, text)
    return folder


def write_site(kit: Path, site_id: str, *, ca: Path, auth_key: Path, auth_pub: Path, secret: Path, keys: Path,
               data: Path, superlink_port: int, port: int, bin_dir: Path) -> Path:
    """kit/site-<id>/: its files and commands.sh (its SuperNode and SuperExec, in the background)."""
    folder = kit / f"site-{site_id}"
    for src, name in ((ca, certs.CA_CERT), (auth_key, certs.NODE_KEY), (auth_pub, certs.NODE_PUB),
                      (secret, "superexec.secret"), (data, "site.csv")):
        _copy(src, folder / name)
    _copy(keys, folder / "keys")
    (folder / "flwr-home").mkdir()
    text = _HEAD.format(title=f"FedSeal site {site_id}: its SuperNode and the SuperExec that runs its ClientApp.",
                        pids=PIDS, bin=bin_dir)
    text += f'SUPERLINK="${{SUPERLINK:-127.0.0.1:{superlink_port}}}"  # the coordinator\'s SuperLink\n\n'
    text += "# The SuperNode connects out to the SuperLink; data and keys reach only this site's ClientApp\n"
    config = node_config("$PWD/site.csv", "$PWD/keys", site_id)
    text += _line(supernode("$SUPERLINK", certs.CA_CERT, certs.NODE_KEY, config, "superexec.secret", port),
                  "supernode.log")
    text += _line(site_superexec(port, "superexec.secret"), "superexec.log")
    _script(folder / COMMANDS, text)
    return folder
