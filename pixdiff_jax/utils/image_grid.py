"""Image grids for sample files (uint8 conversion: :func:`pixdiff_jax.data.to_uint8`)."""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from pixdiff_jax.errors import writing


def make_grid(images: np.ndarray, *, ncol: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles uint8 ``[N, H, W, C]`` into one ``[rows*(H+pad)+pad, cols*(W+pad)+pad, C]`` image."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  ncol = ncol or int(math.ceil(math.sqrt(n)))
  nrow = int(math.ceil(n / ncol))
  grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, images.dtype)
  for k in range(n):
    r, q = divmod(k, ncol)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + q * (w + pad):pad + q * (w + pad) + w] = images[k]
  return grid


def save_grid(path: str, images_uint8: np.ndarray, **kwargs) -> None:
  """Writes a PNG grid of uint8 ``[N, H, W, C]`` images (C = 1 or 3); a failed write (full disk)
  is a ``WriteError`` naming ``path``."""
  grid = make_grid(images_uint8, **kwargs)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  with writing(path, 'image grid'):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid).save(path)
