"""The generic feature extractor: uint8 images -> cropped, grey-to-RGB, ``x / 127.5 - 1`` ->
a network (with its own resize) -> ``float64 [N, D]``, in jitted batches; and the shared
preprocessing helpers (:func:`resize_bilinear`, :func:`center_crop`, :func:`check_images`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, UInt8
from tqdm import tqdm

from pixdiff_jax.errors import InputError

__all__ = ['FeatureExtractor', 'resize_bilinear', 'center_crop', 'check_images']


def resize_bilinear(x: Float[Array, 'b h w c'], size: int) -> Float[Array, 'b size size c']:
  """Bilinear resize to ``size x size`` as ``torch`` ``interpolate(mode='bilinear',
  align_corners=False)``: source coordinate ``(i + 0.5) * in / out - 0.5``, clamped at the
  borders, no antialiasing (also when shrinking)."""
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, size, size, c), method='linear', antialias=False)


def check_images(images: Any, what: str = 'images') -> UInt8[np.ndarray, 'n h w c']:
  """``uint8 [N, H, W, C]`` with ``C`` in (1, 3) (``[N, H, W]`` gets ``C = 1``), else InputError."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise InputError(f'{what} must be uint8 (0..255), got dtype {images.dtype}')
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise InputError(f'{what} must be uint8 [N, H, W, C] with C = 1 or 3, got shape '
                     f'{images.shape}')
  return images


def center_crop(images: UInt8[np.ndarray, 'n h w c'], crop_to: int | None
                ) -> UInt8[np.ndarray, 'n k k c']:
  """The central ``crop_to x crop_to`` square (top-left ``((H - K) // 2, (W - K) // 2)``)."""
  if crop_to is None:
    return images
  _, h, w, _ = images.shape
  if not 0 < crop_to <= min(h, w):
    raise InputError(f'crop_to={crop_to} does not fit images of size {h}x{w}')
  top, left = (h - crop_to) // 2, (w - crop_to) // 2
  return images[:, top:top + crop_to, left:left + crop_to]


@dataclasses.dataclass(eq=False)
class FeatureExtractor:
  """A feature network with fixed preprocessing: ``uint8`` images -> ``float64 [N, dim]``.

  Attributes:
    name: ``'efflite0'`` or ``'inception'``.
    dim: feature dimension (1280 / 2048).
    weights_hash: SHA-256 of the source weight file (keys every cache built on these features).
    features_fn: ``(variables, float32 [B, H, W, 3] in [-1, 1]) -> float32 [B, dim]``; the
      network including its own resize.
    variables: the network's Flax variables.
  """
  name: str
  dim: int
  weights_hash: str
  features_fn: Callable[[Any, jax.Array], jax.Array]
  variables: Any
  default_batch_size: int = 200

  def __post_init__(self):
    def run(variables, images_u8):
      x = images_u8.astype(jnp.float32)
      if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
      return self.features_fn(variables, x / 127.5 - 1.0)
    self._run = jax.jit(run)

  def __call__(self, images: UInt8[np.ndarray, 'n h w c'], *, crop_to: int | None = None,
               batch_size: int | None = None, progress: bool | None = None
               ) -> Float[np.ndarray, 'n d']:
    """Features of ``images`` (see the module docstring), computed in jitted batches.

    Args:
      images: ``uint8 [N, H, W, C]`` (C = 1 or 3) or ``[N, H, W]``.
      crop_to: centre-crop to ``crop_to x crop_to`` first (28 for 28x28 data padded to 32).
      batch_size: images per network call (the last batch is zero-padded, so one compilation).
      progress: show a progress bar (default: when there is more than one batch).

    Returns:
      ``float64 [N, dim]``.
    """
    images = center_crop(check_images(images), crop_to)
    n = len(images)
    batch = max(1, min(batch_size or self.default_batch_size, n))
    num_batches = -(-n // batch)
    show = num_batches > 1 if progress is None else progress
    out = np.empty((n, self.dim), np.float64)
    for b in tqdm(range(num_batches), desc=f'{self.name} features', disable=not show,
                  leave=False):
      chunk = images[b * batch:(b + 1) * batch]
      if len(chunk) < batch:
        chunk = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:],
                                                np.uint8)])
      feats = np.asarray(self._run(self.variables, chunk), np.float64)
      out[b * batch:(b + 1) * batch] = feats[:min(batch, n - b * batch)]
    return out
