"""What ``--mode eval`` evaluates: its sampler settings, parsed from their names, and how many
samples each gets.

Setting names (``parse_setting``):

* pixel-aware: ``paper`` (the preset: K=1, eta=1, no clip, x_T ~ N(0, I), recursion);
  ``consistent`` (the preset with the workdir's K); ``x0_jump_K<k>`` (the consistent preset with
  K = k network calls; ``x0_jump_KT``: K = T; a suffix ``_eta<e>`` sets the fresh noise, e.g.
  ``x0_jump_KT_eta1`` is ancestral sampling); ``vae_prior`` (the VAE's scale prior decoded to
  an image, no reverse model).
* DDPM baseline: ``ddpm`` (ancestral, T steps); ``ddim_<S>`` (eta = 0); ``dpm_solver_<S>``
  (DPM-Solver++(2M)); all with the workdir's ``sampling.clip_denoised``.
* both: ``distilled`` and ``distilled_K2``, the distill stage's student with 1 or 2 network
  calls (the presets of the same names); the default list adds them when the workdir has a
  checkpoint of the distill stage.
"""
from __future__ import annotations

import dataclasses
import re

import ml_collections

from pixdiff_jax.errors import InputError

DEFAULT_SETTINGS = {
    'pixel_aware': ('paper', 'consistent', 'x0_jump_K1', 'x0_jump_K2', 'x0_jump_K5',
                    'x0_jump_KT', 'vae_prior'),
    'ddpm': ('ddpm', 'ddim_10', 'ddim_20', 'ddim_50', 'ddim_100', 'dpm_solver_10',
             'dpm_solver_20'),
}
DISTILLED_SETTINGS = ('distilled', 'distilled_K2')
RESULT_COLUMNS = ('setting', 'sampler', 'num_samples', 'params', 'network_evals',
                  'seconds_per_image', 'fd_efflite0', 'fd_efflite0_floor', 'fid', 'fid_floor')
EVAL_DIR = 'eval'


class EvalError(InputError):
  """A user mistake or an unusable workdir: printed by main.py as one ``error:`` line."""


# ---------------------------------------------------------------------------- eval settings
@dataclasses.dataclass(frozen=True)
class Setting:
  """One sampler setting of ``--mode eval``."""
  name: str
  label: str                 # e.g. 'consistent (x0_jump, K=10, eta=0, clip, scale prior)'
  overrides: dict | None     # kwargs of sampling.get_sample_fn; None = VAE prior alone


def parse_setting(name: str, config: ml_collections.ConfigDict) -> Setting:
  """``Setting`` for a name of the module docstring, checked against the workdir's config."""
  T = config.diffusion.num_steps
  name = name.strip()
  if name in DISTILLED_SETTINGS:
    k = 1 if name == 'distilled' else 2
    how = ('the K=T consistent sampler read from the heads of each call (x0_steps)'
           if config.method == 'pixel_aware' else 'clean image from x_T'
           + (', then from the midpoint' if k == 2 else ''))
    return Setting(name, f'distilled student, {k} call{"s" * (k > 1)} ({how})',
                   dict(preset=name))
  if config.method == 'pixel_aware':
    if name == 'paper':
      return Setting(name, 'paper preset (Algorithm 1: K=1, eta=1, no clip, x_T ~ N(0, I))',
                     dict(preset='paper'))
    if name == 'consistent':
      k = int(config.sampling.network_calls)
      return Setting(name, f'consistent preset (x0_jump, K={k}, eta=0, clip, scale prior)',
                     dict(preset='consistent', network_calls=k))
    m = re.fullmatch(r'x0_jump_K(\d+|T)(?:_eta(\d+(?:\.\d+)?))?', name)
    if m:
      k = T if m.group(1) == 'T' else int(m.group(1))
      if not 1 <= k <= T:
        raise EvalError(f'eval setting {name!r}: K must lie in 1..T={T}')
      eta = float(m.group(2) or 0)
      extra = dict(eta=eta) if m.group(2) else {}
      return Setting(name, f'x0_jump, K={k}, eta={eta:g}, clip, scale prior',
                     dict(preset='consistent', network_calls=k, **extra))
    if name == 'vae_prior':
      return Setting(name, 'VAE scale prior alone (no reverse model)', None)
  else:
    clip = bool(config.sampling.clip_denoised)
    if name == 'ddpm':
      return Setting(name, f'DDPM-{T} ancestral', dict(sampler='ddpm', clip_denoised=clip))
    m = re.fullmatch(r'(ddim|dpm_solver)_(\d+)', name)
    if m:
      s = int(m.group(2))
      if not 1 <= s <= T:
        raise EvalError(f'eval setting {name!r}: the step count must lie in 1..T={T}')
      label = f'DDIM-{s} (eta=0)' if m.group(1) == 'ddim' else f'DPM-Solver++(2M)-{s}'
      extra = dict(eta=0.0) if m.group(1) == 'ddim' else {}
      return Setting(name, label, dict(sampler=m.group(1), num_steps=s, clip_denoised=clip,
                                       **extra))
  known = ('paper, consistent, x0_jump_K<k>[_eta<e>], x0_jump_KT[_eta<e>], vae_prior'
           if config.method == 'pixel_aware' else 'ddpm, ddim_<S>, dpm_solver_<S>')
  known += ', distilled, distilled_K2'
  raise EvalError(f'unknown eval setting {name!r} for method={config.method!r} '
                  f'(config.eval.samplers); known: {known}')


def settings_for(config: ml_collections.ConfigDict, ev: ml_collections.ConfigDict, *,
                 distilled: bool = False) -> list[Setting]:
  """The settings of ``eval.samplers``, or the method's defaults (plus the distilled ones when
  ``distilled``: the workdir has a distill stage)."""
  names = [n for n in str(ev.samplers).split(',') if n.strip()] or list(
      DEFAULT_SETTINGS[config.method]) + (list(DISTILLED_SETTINGS) if distilled else [])
  settings = [parse_setting(n, config) for n in names]
  if len({s.name for s in settings}) != len(settings):
    raise EvalError(f'config.eval.samplers names a setting twice: {names}')
  return settings


def sample_counts(ev: ml_collections.ConfigDict, names: list[str]) -> dict[str, int]:
  """Samples per setting: ``eval.num_samples``, or the count in ``eval.num_samples_by_setting``."""
  counts = {n: int(ev.num_samples) for n in names}
  for item in str(ev.num_samples_by_setting).split(','):
    if not item.strip():
      continue
    key, sep, value = item.partition(':')
    if not sep or not value.strip().isdigit():
      raise EvalError(f"config.eval.num_samples_by_setting must look like 'name:n,...', "
                      f'got {ev.num_samples_by_setting!r}')
    if key.strip() in counts:
      counts[key.strip()] = int(value)
  for name, n in counts.items():
    if n < 2:
      raise EvalError(f'setting {name!r} would use {n} samples: a Frechet distance needs at '
                      'least 2 (config.eval.num_samples / num_samples_by_setting)')
  return counts
