"""Write example site folders of PNGs for examples/png_cnn/task.py: scikit-learn's bundled 8x8
digits, upscaled to 16x16 grayscale PNGs, split across N sites (80 % train, 20 % val each).

    python examples/png_cnn/make_data.py DIR --sites 3 [--per-site 120] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def write_sites(root: Path, sites: int, per_site: int = 120, seed: int = 0) -> list[int]:
    """Write DIR/site-<i>/{train,val}/<digit>/<n>.png; return the images per site."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    counts = []
    for site in range(sites):
        rows = order[site * per_site:(site + 1) * per_site]
        if len(rows) == 0:
            raise SystemExit(f"not enough digits for {sites} sites of {per_site}")
        n_val = max(1, len(rows) // 5)
        for split, part in (("val", rows[:n_val]), ("train", rows[n_val:])):
            for i in part:
                folder = root / f"site-{site}" / split / str(digits.target[i])
                folder.mkdir(parents=True, exist_ok=True)
                pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
                Image.fromarray(pixels).resize((16, 16), Image.NEAREST).save(folder / f"{i}.png")
        counts.append(len(rows))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--per-site", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = write_sites(args.dir, args.sites, args.per_site, args.seed)
    print(f"{args.dir}: {len(counts)} sites, images per site {counts}")


if __name__ == "__main__":
    main()
