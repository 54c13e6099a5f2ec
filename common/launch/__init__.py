"""Launchers that start both sides as processes, naming the apps by component string (they never
import `server` or `client`):
- `simulate`: the `fedseal simulate` command (Flower's simulation engine, server/engine.py, in a
  child process; `progress` draws its live display);
- `deploy_local`: a SuperLink and SuperNodes on 127.0.0.1 (scripts/deploy-local.sh);
- `flwr_run`: `flwr run .` and the SuperLink it spawns (scripts/flwr-run.sh).

May import: every library package of `common/`. Never Flower: Flower runs in the processes they start.
"""
