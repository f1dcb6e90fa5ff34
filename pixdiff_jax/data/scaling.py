"""Scaling between ``uint8`` images and the models' ranges.

Scaling (docs/design.md section 1), with ``v`` the pixel value in ``[0, 1]``:

* ``v = u8 / 255``; with dequantisation ``v = (u8 + w) / 256``, ``w ~ U[delta, 1 - delta)`` per
  value, ``delta = 2**-10`` (:data:`DEQUANT_MARGIN`): the margin keeps every dequantised value
  far enough (in float32) from its bin's edges for :func:`to_uint8` to recover ``u8`` exactly.
* pixel-aware (``config.method == 'pixel_aware'``): ``x0 = eps + (1 - eps) * v``, in ``[eps, 1]``.
* DDPM baseline (``config.method == 'ddpm'``): ``x0 = 2 v - 1``, in ``[-1, 1]``.
* :func:`to_uint8` (given the same ``method``) inverts exactly: ``round(255 v)`` (or
  ``floor(256 v)`` for dequantised data), so ``to_uint8(scale_images(u8, method=m), method=m)
  == u8`` bit for bit, with or without dequantisation. Its default, ``method='unit'``, takes
  ``[0, 1]`` images (what ``sample_fn`` returns); it refuses NaN and inf.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from jaxtyping import Float, UInt8

from pixdiff_jax.errors import ConfigError

__all__ = ['DEQUANT_MARGIN', 'Method', 'check_method', 'value_range', 'scale_images', 'to_unit', 'to_uint8',
           'check_images']

_METHODS = ('pixel_aware', 'ddpm')
DEQUANT_MARGIN = 2.0**-10

Method = Literal['pixel_aware', 'ddpm']


def check_method(method: str) -> None:
  if method not in _METHODS:
    raise ConfigError(f'config.method must be one of {_METHODS}, got {method!r}')


def value_range(method: Method = 'pixel_aware', eps: float = 4e-3) -> tuple[float, float]:
  """Returns ``(low, high)`` of scaled images as float32-representable Python floats.

  ``[eps, 1]`` for ``'pixel_aware'`` (``eps`` rounded to float32), ``[-1, 1]`` for ``'ddpm'``.
  """
  check_method(method)
  if method == 'ddpm':
    return -1.0, 1.0
  if not 0.0 <= eps < 1.0:
    raise ConfigError(f'config.diffusion.eps must lie in [0, 1), got {eps}')
  return float(np.float32(eps)), 1.0


def scale_images(images: UInt8[np.ndarray, '*b h w c'], *, method: Method = 'pixel_aware',
                 eps: float = 4e-3, dequantize: bool = False,
                 rng: np.random.Generator | None = None) -> Float[np.ndarray, '*b h w c']:
  """Maps ``uint8`` images to the model's range (see the module docstring), as float32.

  Args:
    images: ``uint8`` array of any shape.
    method: ``'pixel_aware'`` -> ``[eps, 1]``; ``'ddpm'`` -> ``[-1, 1]``.
    eps: the pixel-aware lower bound (``config.diffusion.eps``).
    dequantize: add ``w ~ U[delta, 1 - delta)`` (``delta = DEQUANT_MARGIN``) to every value and
      divide by 256 instead of 255.
    rng: NumPy generator for the dequantisation noise (required when ``dequantize``).

  Returns:
    float32 array of the same shape, guaranteed inside :func:`value_range` (clipped after the
    affine map, which only ever moves float32 rounding errors).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f'scale_images expects uint8 images, got dtype {images.dtype}')
  low, high = value_range(method, eps)
  if dequantize:
    if rng is None:
      raise ValueError('scale_images(dequantize=True) needs an rng')
    w = rng.uniform(DEQUANT_MARGIN, 1.0 - DEQUANT_MARGIN, images.shape).astype(np.float32)
    v = (images.astype(np.float32) + w) / np.float32(256)
  else:
    v = images.astype(np.float32) / np.float32(255)
  if method == 'ddpm':
    x = v * np.float32(2) - np.float32(1)
  else:
    x = np.float32(low) + np.float32(1 - low) * v
  return np.clip(x, np.float32(low), np.float32(high))


def to_unit(x: Any, *, method: Method = 'pixel_aware', eps: float = 4e-3) -> Any:
  """Inverse of the affine part of :func:`scale_images`: model range -> ``v`` in ``[0, 1]``.

  Pure array arithmetic, so it works on NumPy and JAX arrays (also under ``jax.jit``); the
  result is clipped to ``[0, 1]``. Shapes are preserved.
  """
  low, _ = value_range(method, eps)
  if method == 'ddpm':
    v = (x + 1.0) * 0.5
  else:
    v = (x - low) / (1.0 - low)
  return v.clip(0.0, 1.0)


def to_uint8(x: Any, *, method: Method | Literal['unit'] = 'unit', eps: float = 4e-3,
             dequantize: bool = False) -> UInt8[np.ndarray, '*b h w c']:
  """Converts float images (any shape) to ``uint8``; the one conversion used for every file.

  Args:
    x: float images; NaN or inf raise ``ValueError`` (a NaN would otherwise become a black
      pixel without a word).
    method: the range of ``x``: ``'unit'`` (default) for ``[0, 1]``, what ``sample_fn``
      returns; ``'pixel_aware'`` (``[eps, 1]``) or ``'ddpm'`` (``[-1, 1]``) for model-range
      images, for which this is the exact inverse of :func:`scale_images`.
    eps: the pixel-aware lower bound.
    dequantize: ``floor(256 v)`` (clipped to 255) instead of ``round(255 v)``.

  Out-of-range values (e.g. samples) are clipped first.
  """
  x = np.asarray(x, np.float32)
  finite = np.isfinite(x)
  if not finite.all():
    raise ValueError(f'to_uint8: {int(x.size - finite.sum())} of {x.size} pixel values are not '
                     'finite (NaN or inf); the images come from non-finite parameters or a '
                     'diverged sampler')
  v = x.clip(0.0, 1.0) if method == 'unit' else np.asarray(
      to_unit(x, method=method, eps=eps), np.float32)
  if dequantize:
    u = np.floor(v * np.float32(256))
  else:
    u = np.rint(v * np.float32(255))
  return np.clip(u, 0, 255).astype(np.uint8)


def check_images(x: Any, *, method: Method = 'pixel_aware', eps: float = 4e-3,
                 image_size: int | None = None, num_channels: int | None = None,
                 name: str = 'images') -> Any:
  """Raises ``ValueError`` unless concrete ``x`` is finite and inside :func:`value_range`.

  Args:
    x: float array ``[..., H, W, C]`` (NumPy or a concrete JAX array; not a tracer).
    method, eps: select the valid range, as in :func:`scale_images`.
    image_size, num_channels: when given, the trailing shape must be ``[image_size,
      image_size, num_channels]``.
    name: used in the message.

  Returns:
    ``x`` unchanged, so it can be used inline.
  """
  a = np.asarray(x)
  if image_size is not None or num_channels is not None:
    want = (image_size, image_size, num_channels)
    if a.ndim < 3 or any(w is not None and s != w for s, w in zip(a.shape[-3:], want)):
      raise ValueError(f'{name}: shape {a.shape} does not end in [H, W, C] = '
                       f'[{image_size}, {image_size}, {num_channels}] (config.data.image_size / '
                       'config.data.num_channels)')
  if not np.issubdtype(a.dtype, np.floating):
    raise ValueError(f'{name}: expected a float array, got dtype {a.dtype}')
  low, high = value_range(method, eps)
  finite = np.isfinite(a)
  if not finite.all():
    raise ValueError(f'{name}: {int(a.size - finite.sum())} non-finite values')
  if a.size:
    lo, hi = float(a.min()), float(a.max())
    if lo < low or hi > high:
      n_bad = int(np.count_nonzero((a < low) | (a > high)))
      raise ValueError(f'{name}: {n_bad} values outside [{low}, {high}] ({method}); '
                       f'min {lo}, max {hi}')
  return x
