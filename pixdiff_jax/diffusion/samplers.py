"""Reverse-time samplers: the paper's one-pass recursion (Algorithm 1), its block-sequential
generalisation, and the scalar-schedule baselines DDPM, DDIM and DPM-Solver++(2M).

Every sampler here is a pure function of (model function or predictions, PRNG key or noise,
settings): it can be wrapped in ``jax.jit`` / ``jax.vmap`` / ``pmap`` by the caller, works in
float32 (float64 only if every input is float64 and x64 is enabled) and makes a number of network
evaluations that is known statically (:func:`num_network_evals`).

The pixel-aware samplers live in :mod:`pixdiff_jax.diffusion.pixel_aware` (conventions there),
the DDPM / DDIM / DPM-Solver++(2M) baselines in :mod:`pixdiff_jax.diffusion.baselines`; this
module is their public front (``from pixdiff_jax import samplers``) and counts network
evaluations.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pixdiff_jax.diffusion.baselines import (EpsFn, ddim_sample, ddim_timesteps, ddpm_sample,
                                             dpm_solver_pp_2m_sample, dpm_solver_timesteps)
from pixdiff_jax.diffusion.pixel_aware import (EPS, TARGETS, UPDATES, HeadFn, ModelFn, Target,
                                               Update, block_sequential_reverse, block_starts,
                                               parallel_reverse, reverse_noise)
from pixdiff_jax.diffusion.validation import check_int

__all__ = [
    'EPS', 'parallel_reverse', 'block_sequential_reverse', 'block_starts', 'reverse_noise',
    'ddpm_sample', 'ddim_sample', 'ddim_timesteps', 'dpm_solver_pp_2m_sample',
    'dpm_solver_timesteps', 'num_network_evals', 'TARGETS', 'UPDATES', 'EpsFn', 'HeadFn',
    'ModelFn', 'Target', 'Update',
]


_SAMPLER_ALIASES = {
    'pixel_aware': 'pixel_aware', 'parallel': 'pixel_aware', 'block_sequential': 'pixel_aware',
    'ddpm': 'ddpm', 'ddim': 'ddim',
    'dpm_solver': 'dpm_solver', 'dpm_solver_pp_2m': 'dpm_solver', 'dpm_solver++': 'dpm_solver',
}


def num_network_evals(sampler: str, **settings: Any) -> int:
  """Static number of network evaluations of a sampler with the given settings.

  * ``'pixel_aware'`` (also ``'parallel'``, ``'block_sequential'``): ``network_calls`` (default 1) evaluations of the
    reverse model R; the scale estimator G adds one more evaluation of a (smaller) network.
  * ``'ddpm'``: ``T = len(alphas_cumprod)`` (or ``num_train_steps``).
  * ``'ddim'``, ``'dpm_solver'`` (``'dpm_solver_pp_2m'``): ``num_steps`` (S).
  Unrelated settings are ignored, so a sampler's full keyword set can be passed.
  """
  kind = _SAMPLER_ALIASES.get(sampler)
  if kind is None:
    raise ValueError(f'sampler must be one of {sorted(_SAMPLER_ALIASES)}, got {sampler!r}')
  if kind == 'pixel_aware':
    return check_int('network_calls', settings.get('network_calls', 1), lo=1)
  if kind == 'ddpm':
    if settings.get('alphas_cumprod') is not None:
      return int(np.shape(settings['alphas_cumprod'])[0])
    if 'num_train_steps' in settings:
      return check_int('num_train_steps', settings['num_train_steps'], lo=1)
    raise ValueError("ddpm needs alphas_cumprod= or num_train_steps= to count evaluations")
  if 'num_steps' not in settings:
    raise ValueError(f'{sampler} needs num_steps= (S) to count evaluations')
  return check_int('num_steps', settings['num_steps'], lo=1)
