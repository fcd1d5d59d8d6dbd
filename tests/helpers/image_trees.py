"""Image files for the tests: small ImageFolder trees of random JPEGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_tree(root: Path, classes=("cat", "dog", "owl"), n_train=3, n_val=2, size=(70, 60), seed=0):
    """An ImageFolder tree of small random RGB JPEGs: <root>/{train,val}/<class>/<i>.jpg."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return root
