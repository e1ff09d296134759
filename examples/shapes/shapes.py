"""The example's own data set: 16x16 grey images of four procedurally drawn shapes (square,
cross, disc, diagonal bar) at random positions and sizes, with noise. Seeded, generated in
memory in a fraction of a second; the search space names ``shapes:load`` as its factory."""

from __future__ import annotations

import numpy as np

CLASSES = ("square", "cross", "disc", "diagonal")


def _draw(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    img = np.zeros((size, size), dtype=np.float32)
    r = int(rng.integers(3, size // 3))
    cy, cx = (int(v) for v in rng.integers(r, size - r, size=2))
    yy, xx = np.mgrid[:size, :size]
    if label == 0:
        img[cy - r:cy + r, cx - r:cx + r] = 1.0
    elif label == 1:
        img[cy - r:cy + r, cx - 1:cx + 1] = 1.0
        img[cy - 1:cy + 1, cx - r:cx + r] = 1.0
    elif label == 2:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1.0
    else:
        img[np.abs((yy - cy) - (xx - cx)) <= 1] = 1.0
    return img + 0.3 * rng.standard_normal((size, size)).astype(np.float32)


def load(n_train: int = 800, n_test: int = 200, size: int = 16, seed: int = 0):
    """``(x_train, y_train, x_test, y_test)``: images (N, 1, size, size) float32, labels (N,)."""
    rng = np.random.default_rng(seed)

    def make(n: int):
        y = rng.integers(0, len(CLASSES), size=n)
        x = np.stack([_draw(rng, int(label), size) for label in y])[:, None]
        return x, y

    x, y = make(n_train)
    xt, yt = make(n_test)
    return x, y, xt, yt
