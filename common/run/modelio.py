"""Reading and writing model files: safetensors (read and write) and PyTorch .pt state dicts (read)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.errors import InputError

TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def load_state(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (name -> numpy array) and string metadata of a model file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix in TORCH_SUFFIXES:
        return _load_torch(path), {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            metadata = dict(f.metadata() or {})
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    return state, metadata


def _load_torch(path: Path) -> dict[str, np.ndarray]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds on a bad file
        raise InputError(f"{path}: not a readable PyTorch state dict ({exc.__class__.__name__}: {exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: expected a state dict (tensor name -> tensor)")
    state = {}
    for name, tensor in obj.items():
        if tensor.dtype == torch.bfloat16:
            raise InputError(f"{path}: tensor {name!r} is bfloat16, which FedSeal cannot handle yet")
        state[str(name)] = tensor.detach().contiguous().numpy().copy()
    return state


def save_state(path: str | os.PathLike, state: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically: a reader never sees a half-written file."""
    from common.run.records import save_arrays

    path = Path(path)
    if path.suffix in TORCH_SUFFIXES:
        raise InputError(f"{path}: FedSeal writes safetensors files; use a .safetensors name")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such directory")
    save_arrays(path, state, metadata)
