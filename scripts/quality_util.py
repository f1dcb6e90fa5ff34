"""Helpers shared by the quality diagnostics (``diagnose_reverse.py``, ``rescale_sampling.py``)."""
from __future__ import annotations

import sys

import numpy as np

from pixdiff_jax import config as config_lib


def laplacian_energy(x: np.ndarray) -> float:
  """Mean squared 4-neighbour Laplacian of ``[N, H, W, C]`` images (interior pixels), float64:
  the high-frequency energy that blur removes."""
  x = np.asarray(x, np.float64)
  lap = (4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2]
         - x[:, 1:-1, 2:])
  return float(np.mean(np.square(lap)))


def load_x0_workdir(workdir: str):
  """The stored config of a pixel-aware workdir trained with ``diffusion.target='x0'``;
  anything else ends with one error line (exit 2)."""
  try:
    config = config_lib.load_config(workdir)
  except (FileNotFoundError, ValueError) as err:
    print(f'error: {err}', file=sys.stderr)
    sys.exit(2)
  if config.method != 'pixel_aware' or config.diffusion.target != 'x0':
    print(f'error: {workdir} is not a pixel-aware workdir trained with diffusion.target=x0',
          file=sys.stderr)
    sys.exit(2)
  return config
