"""A run's settings: one frozen dataclass, parsed once from CLI flags or Flower run config.

Run-config keys (pyproject.toml [tool.flwr.app.config], `flwr run . --run-config`) and the
`fedseal simulate` flags share the names below; `RunSettings.to_run_config()` and
`RunSettings.from_run_config()` convert between the two.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from common.errors import InputError
from common.learning.data import DATASETS, parse_partition
from common.learning.dp import DpSpec, parse_dp
from common.run.inject import Injection
from common.run.inject import parse as parse_injections

SECURE_MODES = ("none", "he", "masked")

# run-config key -> RunSettings attribute
RUN_CONFIG_KEYS = {
    "dataset": "dataset",
    "num-rounds": "num_rounds",
    "local-epochs": "local_epochs",
    "lr": "lr",
    "batch-size": "batch_size",
    "partition": "partition",
    "seed": "seed",
    "secure-mode": "secure_mode",
    "min-clients": "min_clients",
    "out-dir": "out_dir",
    "aggregator": "aggregator",
    "on-tamper": "on_tamper",
    "inject": "inject",
    "keys-dir": "keys_dir",
    "resume": "resume",
    "dp": "dp",
    "round-timeout": "round_timeout",
    "clients": "clients",
    "clients-per-round": "clients_per_round",
    "max-skipped-rounds": "max_skipped_rounds",
    "report": "report",
    "task": "task",
    "features": "features",
    "label-column": "label_column",
    "classes": "classes",
    "hidden": "hidden",
    "max-site-weight": "max_site_weight",
}

AGGREGATORS = ("fedavg", "median", "trimmed-mean", "krum")
ON_TAMPER = ("reject", "recover")


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs to know, validated on construction.

    Attributes:
        dataset (str, "breast-cancer"): "breast-cancer" (MLP) or "digits" (small CNN).
        num_rounds (int, 5): federated rounds, >= 1.
        local_epochs (int, 5): epochs each site trains per round, >= 1.
        lr (float, 0.05): SGD learning rate (momentum 0.9), > 0.
        batch_size (int, 32): local minibatch size, >= 1.
        partition (str, "iid"): "iid" or "dirichlet:ALPHA" (simulation only).
        seed (int, 0): seeds the initial model, the partition and every local step.
        secure_mode (str, "none"): how sites return updates: "none" (sealed weights; the server
            sees each site's update) or a secure mode in SECURE_MODES (the server sees only the sum).
        min_clients (int, 2): sites the server waits for, and the fewest accepted replies
            that update the model in a round, >= 1.
        out_dir (str, ""): run folder; "" means runs/<timestamp> under the server's cwd.
        aggregator (str, "fedavg"): fedavg, or a robust one for `none` mode: median,
            trimmed-mean, krum.
        on_tamper (str, "reject"): a reply whose seal fails is rejected; with "recover" it is
            restored bit-exactly and accepted when within the recovery bound.
        inject (str, ""): simulation fault injection, comma-separated KIND:CLIENT:ROUND
            (see common/run/inject.py).
        keys_dir (str, ""): the federation's key folder (from `fedseal keys init`) holding
            server/; "" means the run makes its own keys in <run folder>/keys.
        resume (bool, False): continue the run in out_dir after its last completed round.
        dp (str, ""): differential privacy, "" = off; "sample:EPS,DELTA[,CLIP]" (DP-SGD at each
            site) or "client:NOISE,CLIP[,DELTA]" (clipped updates, server noise); common/learning/dp.py.
        round_timeout (int, 300): seconds the server waits for the sites' replies at each step of
            a round; sites that do not answer in time are left out of that round.
        clients (int, 0): simulation: the number of sites; the server makes keys for all of them
            and waits (at most round_timeout seconds) until all are connected. 0: the sites of
            keys_dir in deployment, or in simulation those connected once no new one joined.
        clients_per_round (int, 0): sites sampled into each round's cohort (seeded by seed and
            round); 0 means all. min_clients applies to the cohort.
        max_skipped_rounds (int, 3): after this many skipped rounds in a row (too few accepted
            replies) the server stops the run, exits non-zero and says which sites failed and why.
        report (bool, True): the server writes report.html into the run folder when the run ends
            (simulated, `flwr run` or deployed alike).
        task (str, ""): the task to train: a built-in (breast-cancer, digits, csv, fraud),
            FILE.py:NAME or package.module:NAME (common/learning/task_spec.py); "" = `dataset`.
        features (str, ""): csv task: the feature column names, comma-separated.
        label_column (str, "label"): csv task: the column holding the class label.
        classes (int, 2): csv task: number of classes (labels 0..classes-1).
        hidden (str, "32"): csv task: the MLP's hidden layer sizes, comma-separated.
        max_site_weight (float, 0.5): the largest FedAvg weight n / sum(n) one site may carry in a
            round, in (0, 1]; a site above it is left out of the round and audited. Applies when
            more than 1/max_site_weight sites take part.
    """

    dataset: str = "breast-cancer"
    num_rounds: int = 5
    local_epochs: int = 5
    lr: float = 0.05
    batch_size: int = 32
    partition: str = "iid"
    seed: int = 0
    secure_mode: str = "none"
    min_clients: int = 2
    out_dir: str = ""
    aggregator: str = "fedavg"
    on_tamper: str = "reject"
    inject: str = ""
    keys_dir: str = ""
    resume: bool = False
    dp: str = ""
    round_timeout: int = 300
    clients: int = 0
    clients_per_round: int = 0
    max_skipped_rounds: int = 3
    report: bool = True
    task: str = ""
    features: str = ""
    label_column: str = "label"
    classes: int = 2
    hidden: str = "32"
    max_site_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise InputError(f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        _require_int(self.num_rounds, "num-rounds", 1)
        _require_int(self.local_epochs, "local-epochs", 1)
        _require_int(self.batch_size, "batch-size", 1)
        _require_int(self.min_clients, "min-clients", 1)
        _require_int(self.seed, "seed", 0)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a number > 0, got {self.lr!r}")
        parse_partition(self.partition)
        if self.secure_mode not in SECURE_MODES:
            raise InputError(f"unknown secure-mode {self.secure_mode!r}; choose one of: {', '.join(SECURE_MODES)}")
        if not isinstance(self.out_dir, str):
            raise InputError(f"out-dir must be a string, got {self.out_dir!r}")
        if self.aggregator not in AGGREGATORS:
            raise InputError(f"unknown aggregator {self.aggregator!r}; choose one of: {', '.join(AGGREGATORS)}")
        if self.on_tamper not in ON_TAMPER:
            raise InputError(f"on-tamper must be one of: {', '.join(ON_TAMPER)}; got {self.on_tamper!r}")
        if self.secure_mode != "masked" and any(i.kind == "drop-late" for i in parse_injections(self.inject)):
            raise InputError("inject drop-late (a site vanishing after sending its masked vector) needs "
                             "secure-mode masked; use drop in other modes")
        if not isinstance(self.keys_dir, str):
            raise InputError(f"keys-dir must be a string, got {self.keys_dir!r}")
        if not isinstance(self.resume, bool):
            raise InputError(f"resume must be true or false, got {self.resume!r}")
        _require_int(self.round_timeout, "round-timeout", 1)
        self._check_sampling()
        _require_int(self.max_skipped_rounds, "max-skipped-rounds", 1)
        if not isinstance(self.report, bool):
            raise InputError(f"report must be true or false, got {self.report!r}")
        for key, value in (("task", self.task), ("features", self.features), ("label-column", self.label_column),
                           ("hidden", self.hidden)):
            if not isinstance(value, str):
                raise InputError(f"{key} must be a string, got {value!r}")
        _require_int(self.classes, "classes", 2)
        w = self.max_site_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and 0 < w <= 1):
            raise InputError(f"max-site-weight must be a number in (0, 1], got {w!r}")
        dp = parse_dp(self.dp)
        if self.secure_mode != "none":
            self._check_secure_mode(dp)
        if dp is not None and dp.kind == "client" and self.aggregator != "fedavg":
            raise InputError(f"dp {self.dp!r}: client-level DP averages the clipped updates; it needs "
                             f"aggregator fedavg, not {self.aggregator!r}")

    def _check_sampling(self) -> None:
        """The cohort must hold min-clients sites and fit in the federation."""
        _require_int(self.clients, "clients", 0)
        _require_int(self.clients_per_round, "clients-per-round", 0)
        if self.clients and self.clients_per_round > self.clients:
            raise InputError(f"clients-per-round {self.clients_per_round} is more than the {self.clients} sites")
        if self.clients_per_round and self.min_clients > self.clients_per_round:
            raise InputError(f"min-clients {self.min_clients} is more than clients-per-round "
                             f"{self.clients_per_round}: no round could ever update the model")

    def _check_secure_mode(self, dp: DpSpec | None) -> None:
        """In a secure mode the server sees only the sum of the updates."""
        if self.aggregator != "fedavg":
            raise InputError(f"aggregator {self.aggregator!r} needs each site's update; secure-mode "
                             f"{self.secure_mode!r} gives the server only their sum: use fedavg")
        if self.on_tamper != "reject":
            raise InputError(f"on-tamper recover restores watermarked weights (secure-mode none); a "
                             f"{self.secure_mode!r} payload that fails its seal can only be rejected")
        if dp is not None and dp.kind == "client":
            raise InputError(f"dp {self.dp!r}: client-level DP re-clips each update on the server, which "
                             f"secure-mode {self.secure_mode!r} hides; use dp sample:EPS,DELTA (DP-SGD at each site)")

    @property
    def injections(self) -> tuple[Injection, ...]:
        """The parsed fault injections."""
        return parse_injections(self.inject)

    @property
    def task_spec(self) -> str:
        """The task this run trains: `task`, or the built-in named by `dataset`."""
        return self.task or self.dataset

    @property
    def task_config(self) -> dict[str, Any]:
        """What the task gets as its config (Task.config)."""
        return {"features": self.features, "label-column": self.label_column, "classes": self.classes,
                "hidden": self.hidden, "partition": self.partition, "seed": self.seed}

    @property
    def dp_spec(self) -> DpSpec | None:
        """The parsed `dp` setting (None: no differential privacy)."""
        return parse_dp(self.dp)

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> "RunSettings":
        """Build from Flower run config; missing keys take defaults, unknown keys are an error."""
        unknown = sorted(set(config) - set(RUN_CONFIG_KEYS))
        if unknown:
            raise InputError(f"unknown run-config key(s): {', '.join(unknown)}; known: {', '.join(RUN_CONFIG_KEYS)}")
        values = {RUN_CONFIG_KEYS[k]: v for k, v in config.items()}
        if isinstance(values.get("lr"), int) and not isinstance(values.get("lr"), bool):
            values["lr"] = float(values["lr"])
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        """The run-config dict (Flower key names) that reproduces these settings."""
        attrs = asdict(self)
        return {key: attrs[attr] for key, attr in RUN_CONFIG_KEYS.items()}

    def replace(self, **changes: Any) -> "RunSettings":
        """A copy with some attributes changed (validated again)."""
        attrs = {f.name: getattr(self, f.name) for f in fields(self)}
        attrs.update(changes)
        return RunSettings(**attrs)


def _require_int(value: Any, key: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{key} must be an integer >= {minimum}, got {value!r}")
