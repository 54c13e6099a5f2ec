"""A site's own images: a small CNN with BatchNorm on grayscale PNGs in class folders.

Each site holds its images as

    SITE/train/<class>/*.png      SITE/val/<class>/*.png      (<class> is one of CLASSES)

In a deployment SITE is the SuperNode's node config `data-path`; in a simulation it is
`data_root/site-<partition id>` (make one with `python examples/png_cnn/make_data.py DIR --sites N`).
Pillow decodes each image when the DataLoader asks for it: the images are streamed, never all
loaded at once.

    fedseal simulate --task examples/png_cnn/task.py:PngCnnTask --clients 3 --rounds 2
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from common.task import SiteInfo, Task

CLASSES = tuple(str(d) for d in range(10))
IMAGE_SIZE = 16  # pixels per side; other sizes are resized on load


class PngFolder(Dataset):
    """The PNGs under ROOT/<class>/ as (1 x IMAGE_SIZE x IMAGE_SIZE float tensor in [0, 1], class index)."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise FileNotFoundError(f"no image folder {root}")
        self.items = [(path, label) for label, name in enumerate(CLASSES)
                      for path in sorted((root / name).glob("*.png"))]
        if not self.items:
            raise ValueError(f"no PNG files in {root}/<class>/ for classes {', '.join(CLASSES)}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        with Image.open(path) as image:
            gray = image.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE))
            pixels = np.asarray(gray, dtype=np.float32) / 255.0
        return torch.from_numpy(pixels).unsqueeze(0), label


def cnn(norm: str = "batch") -> nn.Module:
    """Two conv blocks (conv, norm, ReLU, pool) and a linear head; `norm` "batch" or "group"."""
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        layer = nn.BatchNorm2d(c_out) if norm == "batch" else nn.GroupNorm(4, c_out)
        return [nn.Conv2d(c_in, c_out, 3, padding=1), layer, nn.ReLU(), nn.MaxPool2d(2)]

    side = IMAGE_SIZE // 4
    return nn.Sequential(*block(1, 8), *block(8, 16), nn.Flatten(), nn.Linear(16 * side * side, len(CLASSES)))


class PngCnnTask(Task):
    """Digits-like PNGs in class folders; a BatchNorm CNN. Subclass it to set `data_root`."""

    name = "png-cnn"
    data_root = Path(__file__).parent / "data"  # simulation: site-<partition id>/ under it
    norm = "batch"

    def build_model(self) -> nn.Module:
        return cnn(self.norm)

    def load_data(self, site: SiteInfo) -> tuple[Dataset, Dataset]:
        if "data-path" in site.node_config:
            folder = Path(str(site.node_config["data-path"]))
        else:
            folder = Path(self.data_root) / f"site-{site.partition_id}"
        return PngFolder(folder / "train"), PngFolder(folder / "val")


class PngGroupNormTask(PngCnnTask):
    """The same CNN with GroupNorm instead of BatchNorm (what `--dp sample` can train)."""

    name = "png-cnn-groupnorm"
    norm = "group"
