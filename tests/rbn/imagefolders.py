"""Small generated RGB ImageFolders (no download): per class a colour and a stripe frequency, with noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210)}


def write_imagefolder(root: Path, per_class: int = 12, size: tuple[int, int] = (48, 40), seed: int = 0,
                      classes: tuple[str, ...] = tuple(COLOURS)) -> Path:
    """root/<class>/<k>.(png|jpg): a class's colour and stripes (its index sets the frequency) plus noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        colour = np.array(COLOURS.get(name, (120, 120, 120)), np.float64)
        for k in range(per_class):
            stripes = 0.5 + 0.5 * np.sin(np.arange(w) * (c + 1) * 0.4 + rng.uniform(0, 6))[None, :, None]
            pixels = colour * (0.6 + 0.4 * stripes) + rng.normal(0, 18, (h, w, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(root / name / (f"{k}.jpg" if k % 2 else f"{k}.png"))
    return root
