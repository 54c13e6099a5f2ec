"""FedSeal's own apps with `wide_model` (tests/anymodels.py, over 1M parameters, BatchNorm) as
the breast-cancer model, and a driver that runs them through `fedseal simulate`'s engine.

- Component strings `tests.anymodel_apps:server_app` / `tests.anymodel_apps:client_app`: the
  ServerApp of server/app.py and a ClientApp whose handlers call client/app.py's, loaded after
  this module registered the model (common.learning.models.register_model) in whichever process
  loads them: the engine's (server) and every Ray worker's (sites). Never import this module into a process
  that must build the built-in breast-cancer model.
- `python -m tests.anymodel_apps --secure-mode MODE --out DIR [--clients N --rounds R]`: one
  simulated run, with run_child's clean-up (common/launch/simulate.py); prints summary.json's path.
"""

from __future__ import annotations

import argparse
import sys

from common.learning import models
from tests.anymodels import wide_model

models.register_model("breast-cancer", wide_model)

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client import app as site  # after the registration, on purpose
from server.app import app as server_app

# Flower pickles the ClientApp to its Ray workers, its handlers by module and name: handlers of
# this module make each worker import it, hence register the model, before client/app.py runs.
client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    return site.train(msg, context)


@client_app.query("masked")
def masked_stage(msg: Message, context: Context) -> Message:
    return site.masked_stage(msg, context)


@client_app.query("decrypt")
def decrypt(msg: Message, context: Context) -> Message:
    return site.decrypt(msg, context)


@client_app.query("enrol")
def enrol(msg: Message, context: Context) -> Message:
    return site.enrol_site(msg, context)


APPS = ("tests.anymodel_apps:server_app", "tests.anymodel_apps:client_app")
__all__ = ["APPS", "client_app", "server_app"]


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from common.launch.simulate import prepare_out_dir, run_child
    from common.run import records
    from common.run.settings import RunSettings

    parser = argparse.ArgumentParser(prog="python -m tests.anymodel_apps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secure-mode", default="none")
    parser.add_argument("--out", required=True)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--dp", default="")
    parser.add_argument("--round-timeout", type=int, default=900,
                        help="seconds to wait for the sites at each step (a shared, loaded machine is slow)")
    args = parser.parse_args(argv)
    folder = prepare_out_dir(args.out, force=False)
    settings = RunSettings(dataset="breast-cancer", num_rounds=args.rounds, local_epochs=args.local_epochs,
                           secure_mode=args.secure_mode, min_clients=args.clients, out_dir=str(folder), dp=args.dp,
                           round_timeout=args.round_timeout)
    code = run_child(settings, args.clients, folder, verbose=False, out=sys.stdout, quiet=True, apps=APPS)
    if code != 0 or not (folder / records.SUMMARY).exists():
        print(f"run failed (exit {code}); see {Path(folder) / 'simulation.log'}", file=sys.stderr)
        return 1
    print(folder / records.SUMMARY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
