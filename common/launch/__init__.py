"""Launchers that start both sides: `simulate` (the `fedseal simulate` command: Flower's simulation
engine, server/engine.py, in a child process) and `deploy_local` (a SuperLink and SuperNodes on
127.0.0.1, scripts/deploy-local.sh). They name the apps by component string and start them as
processes; they never import `server` or `client`.

May import: every library package of `common/`. Never Flower: Flower runs in the processes they start.
"""
