"""Which task a run trains: a built-in name, `FILE.py:NAME` or `package.module:NAME` (run-config
key `task`, `fedseal simulate --task`); the class is loaded and checked here, once per process."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Mapping

from common.errors import InputError, one_line
from common.learning.task import Task
from common.learning.tasks import BUILTIN, builtin


def load_task(spec: str, config: Mapping[str, Any] | None = None) -> Task:
    """The task `spec` names, built with the run's task config; InputError (one line) when the
    spec, the file, the module or the class is wrong."""
    return _load(spec, json.dumps(dict(config or {}), sort_keys=True))


@functools.lru_cache(maxsize=8)
def _load(spec: str, config_json: str) -> Task:
    config = json.loads(config_json)
    if spec in BUILTIN:
        return builtin(spec, config)
    cls = task_class(spec)
    try:
        task = cls(config)
    except InputError:
        raise
    except Exception as exc:  # the user's constructor
        raise InputError(f"task {spec!r}: {cls.__name__}(config) failed: {one_line(f'{type(exc).__name__}: {exc}')}") from None
    for method in ("build_model", "load_data"):
        if getattr(type(task), method) is getattr(Task, method):
            raise InputError(f"task {spec!r}: {cls.__name__} must define {method}()")
    return task


def task_class(spec: str) -> type[Task]:
    """The Task subclass `spec` names (FILE.py:NAME or package.module:NAME)."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise InputError(f"task {spec!r}: expected a built-in ({', '.join(BUILTIN)}), FILE.py:NAME or "
                         f"package.module:NAME")
    module = _import_file(spec, where) if where.endswith(".py") else _import_module(spec, where)
    cls = getattr(module, name, None)
    if cls is None:
        raise InputError(f"task {spec!r}: {where} has no {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise InputError(f"task {spec!r}: {name} is not a subclass of common.task.Task")
    return cls


def resolve_file(where: str) -> Path | None:
    """A task file: as given (absolute or from the current folder), else relative to an entry of
    sys.path (the app folder `flwr run` ships is one)."""
    path = Path(where)
    if path.is_file() or path.is_absolute():
        return path.resolve() if path.is_file() else None
    for entry in sys.path:
        candidate = Path(entry or ".") / path
        if candidate.is_file():
            return candidate.resolve()
    return None


def _import_file(spec: str, where: str):
    path = resolve_file(where)
    if path is None:
        raise InputError(f"task {spec!r}: no such file {where}")
    module_name = f"fedseal_task_{abs(hash(str(path)))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise InputError(f"task {spec!r}: importing {where} failed: {one_line(f'{type(exc).__name__}: {exc}')}") from None
    return module


def _import_module(spec: str, where: str):
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        raise InputError(f"task {spec!r}: no module {exc.name!r} (install it, or put it in the app folder)") from None
    except Exception as exc:
        raise InputError(f"task {spec!r}: importing {where} failed: {one_line(f'{type(exc).__name__}: {exc}')}") from None
