"""Config checks: validation with messages that name the field, sampler presets, and which
fields make a stored checkpoint unusable."""
from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections

from pixdiff_jax.diffusion.parametrisation import TARGETS
from pixdiff_jax.diffusion.pixel_aware import UPDATES
from pixdiff_jax.errors import ConfigError

METHODS = ('pixel_aware', 'ddpm')
SAMPLERS = {'pixel_aware': ('pixel_aware',), 'ddpm': ('ddpm', 'ddim', 'dpm_solver')}
# Earlier names, still accepted (configs saved with them): 'parallel' ran step by step for K = T.
SAMPLER_ALIASES = {'parallel': 'pixel_aware'}
PRIORS = ('standard', 'scale')
VAE_LOSS_SPACES = ('scale', 'x0')
# Per-pixel weights of the reverse loss: 'none' (eq. 15) or 'min_snr' (schedules.min_snr_weight).
LOSS_WEIGHTINGS = ('none', 'min_snr')
# Scale fed to the reverse model in training (losses.get_reverse_loss_fn).
SCALE_SOURCES = ('vae', 'vae_at_T', 'true')

# Named bundles of sampler settings. 'paper' is Algorithm 1 taken literally (one network call,
# fresh noise eta=1, no clipping, x_T ~ N(0, I)). 'consistent' starts from the distribution x_T
# had in training (the VAE's scale prior) and, at each of the config's K network calls, clips
# the clean-image estimate into [eps, 1] and takes a deterministic DDIM step of the per-pixel
# schedule (docs/results.md measures both). 'distilled' and 'distilled_K2' sample with the
# distill stage's student (1 or 2 network calls; docs/design.md section 7): pixel-aware, the
# consistent preset's deterministic steps read from the heads of each call ('x0_steps'); DDPM,
# the student's clean image from x_T (and once more from the midpoint), see
# diffusion/students.py.
SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    'paper': dict(network_calls=1, eta=1.0, clip_denoised=False, prior='standard',
                  update='recursion', distilled=False),
    'consistent': dict(eta=0.0, clip_denoised=True, prior='scale', update='x0_jump',
                       distilled=False),
    'distilled': dict(distilled=True, network_calls=1, eta=0.0, clip_denoised=True,
                      prior='scale', update='x0_steps'),
    'distilled_K2': dict(distilled=True, network_calls=2, eta=0.0, clip_denoised=True,
                         prior='scale', update='x0_steps'),
    'custom': {},
}
DISTILLED_PRESETS = ('distilled', 'distilled_K2')

# Sections whose change makes a stored checkpoint unusable or meaningless.
_ARCHITECTURE_SECTIONS = ('method', 'vae', 'model', 'diffusion', 'data.image_size',
                          'data.num_channels')
# Fields inside those sections that do not change the parameters (compute dtype, how many heads
# the loss evaluates and how it weighs pixels): a run may resume or sample with another value,
# and configs saved before they existed still match.
_NON_ARCHITECTURE_FIELDS = ('vae.dtype', 'model.dtype', 'diffusion.heads_per_example',
                            'diffusion.loss_weighting', 'diffusion.min_snr_gamma')


def _get(config: ml_collections.ConfigDict, dotted: str):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` (a ``ValueError``) naming the config field for settings no run
  could use."""
  if config.method not in METHODS:
    raise ConfigError(f'config.method must be one of {METHODS}, got {config.method!r}')
  d = config.diffusion
  if not isinstance(d.num_steps, int) or d.num_steps < 1:
    raise ConfigError(f'diffusion.num_steps must be an int >= 1, got {d.num_steps!r}')
  if config.method == 'pixel_aware':
    if not d.gamma > 0:
      raise ConfigError(f'diffusion.gamma must be > 0, got {d.gamma!r}')
    if d.target not in TARGETS:
      raise ConfigError(f'diffusion.target must be one of {TARGETS}, got {d.target!r}')
    if d.scale_source not in SCALE_SOURCES:
      raise ConfigError(f'diffusion.scale_source must be one of {SCALE_SOURCES}, '
                        f'got {d.scale_source!r}')
    if not d.get('diagonal_weight', 1.0) > 0:
      raise ConfigError(f'diffusion.diagonal_weight must be > 0, got {d.diagonal_weight!r}')
    weighting = d.get('loss_weighting', 'none')
    if weighting not in LOSS_WEIGHTINGS:
      raise ConfigError(f'diffusion.loss_weighting must be one of {LOSS_WEIGHTINGS}, '
                        f'got {weighting!r}')
    if weighting == 'min_snr':
      if d.target == 'increment':
        raise ConfigError("diffusion.loss_weighting='min_snr' needs diffusion.target 'x0', "
                          "'cumulative' or 'v' (the 'increment' target has no clean-image reading)")
      if not d.get('min_snr_gamma', 5.0) > 0:
        raise ConfigError(f'diffusion.min_snr_gamma must be > 0, got {d.min_snr_gamma!r}')
    n = d.get('heads_per_example', 0)
    if not isinstance(n, int) or n == 1 or n < 0:
      raise ConfigError(f'diffusion.heads_per_example must be 0 (all heads) or an int >= 2, '
                        f'got {n!r}')
    if not config.vae.get('kl_weight', 1.0) >= 0:
      raise ConfigError(f'vae.kl_weight must be >= 0, got {config.vae.kl_weight!r}')
    if config.vae.get('loss_space', 'scale') not in VAE_LOSS_SPACES:
      raise ConfigError(f'vae.loss_space must be one of {VAE_LOSS_SPACES}, '
                        f'got {config.vae.loss_space!r}')
  if not 0 < d.eps < 1:
    raise ConfigError(f'diffusion.eps must lie in (0, 1), got {d.eps!r}')
  t = config.training
  for field in ('batch_size', 'steps_per_dispatch', 'log_every', 'checkpoint_every',
                'keep_checkpoints'):
    if int(t[field]) < 1:
      raise ConfigError(f'training.{field} must be >= 1, got {t[field]!r}')
  if int(t.get('max_skipped_updates', 1)) < 1:
    raise ConfigError(f'training.max_skipped_updates must be >= 1, got {t.max_skipped_updates!r}')
  # Also checked where it is used (the optimiser); here before anything is written.
  if not config.optim.lr > 0:
    raise ConfigError(f'optim.lr must be > 0, got {config.optim.lr}')
  if not float(t.get('memory_limit_gib', 0.0)) >= 0:
    raise ConfigError(f'training.memory_limit_gib must be >= 0 (0 = the device\'s own memory), '
                      f'got {t.memory_limit_gib!r}')
  n_dev = jax.device_count()
  if t.batch_size % n_dev:
    raise ConfigError(
        f'training.batch_size={t.batch_size} is not divisible by the {n_dev} devices in use '
        f'({jax.local_device_count()} local x {jax.process_count()} processes); choose a '
        f'multiple of {n_dev}')
  _validate_distill(config, n_dev)
  s = config.sampling
  if s.preset not in SAMPLING_PRESETS:
    raise ConfigError(f'sampling.preset must be one of {tuple(SAMPLING_PRESETS)}, '
                      f'got {s.preset!r}')
  if SAMPLER_ALIASES.get(s.sampler, s.sampler) not in SAMPLERS[config.method]:
    raise ConfigError(f'sampling.sampler={s.sampler!r} is not available for method='
                      f'{config.method!r}; choose one of {SAMPLERS[config.method]}')


def _validate_distill(config: ml_collections.ConfigDict, n_dev: int) -> None:
  """The ``distill`` section (configs saved before it existed have none: no distill stage)."""
  dd = config.get('distill')
  if dd is None:
    return
  if not isinstance(dd.steps, int) or dd.steps < 0:
    raise ConfigError(f'distill.steps must be an int >= 0 (0 = no distill stage), got {dd.steps!r}')
  if dd.steps == 0:
    return
  for field in ('batch_size', 'num_pairs', 'teacher_batch'):
    if not isinstance(dd[field], int) or dd[field] < 1:
      raise ConfigError(f'distill.{field} must be an int >= 1, got {dd[field]!r}')
  if dd.batch_size % n_dev:
    raise ConfigError(f'distill.batch_size={dd.batch_size} is not divisible by the {n_dev} '
                      f'devices in use; choose a multiple of {n_dev}')
  if not dd.lr > 0 or dd.warmup_steps < 0:
    raise ConfigError(f'distill.lr must be > 0 and distill.warmup_steps >= 0, got {dd.lr!r} and '
                      f'{dd.warmup_steps!r}')
  calls = tuple(dd.calls)
  T = config.diffusion.num_steps
  allowed = range(1, T + 1) if config.method == 'pixel_aware' else (1, 2)
  if not calls or any(not isinstance(k, int) or k not in allowed for k in calls):
    raise ConfigError(f'distill.calls must name network-call counts in '
                      f'{"1..T=" + str(T) if config.method == "pixel_aware" else "(1, 2)"}, '
                      f'got {calls!r}')
  if not dd.final_weight > 0:
    raise ConfigError(f'distill.final_weight must be > 0, got {dd.final_weight!r}')
  n = dd.heads_per_example
  if not isinstance(n, int) or n == 1 or n < 0:
    raise ConfigError(f'distill.heads_per_example must be 0 (all heads) or an int >= 2, got {n!r}')
  if config.method == 'pixel_aware' and config.diffusion.target != 'x0':
    raise ConfigError("the distill stage (distill.steps > 0) needs diffusion.target='x0': the "
                      "student's heads regress onto the teacher's clean images; got "
                      f'{config.diffusion.target!r}')
  output_init = dd.get('output_init', 'teacher')
  if output_init not in ('teacher', 'zero') or (output_init == 'zero' and config.method != 'ddpm'):
    raise ConfigError("distill.output_init must be 'teacher' or (DDPM only) 'zero', got "
                      f'{output_init!r} with method {config.method!r}')
  if config.method == 'ddpm':
    if not isinstance(dd.teacher_steps, int) or not 1 <= dd.teacher_steps <= T:
      raise ConfigError(f'distill.teacher_steps must be an int in 1..diffusion.num_steps={T}, '
                        f'got {dd.teacher_steps!r}')
    if not isinstance(dd.mid_step, int) or not 0 <= dd.mid_step < T:
      raise ConfigError(f'distill.mid_step must be 0 (automatic) or an int in 1..{T - 1}, '
                        f'got {dd.mid_step!r}')


def sampler_settings(config: ml_collections.ConfigDict, **overrides) -> dict[str, Any]:
  """Effective sampler settings: config.sampling, then its preset, then ``overrides``."""
  s = config.sampling.to_dict()
  s.setdefault('update', 'recursion')  # configs saved before the field existed
  s.setdefault('distilled', False)
  s['sampler'] = SAMPLER_ALIASES.get(s['sampler'], s['sampler'])
  preset = overrides.pop('preset', s['preset'])
  if preset not in SAMPLING_PRESETS:
    raise ConfigError(f'sampling preset must be one of {tuple(SAMPLING_PRESETS)}, got {preset!r}')
  s.update(SAMPLING_PRESETS[preset])
  s['preset'] = preset
  unknown = set(overrides) - set(s)
  if unknown:
    raise ConfigError(f'unknown sampler settings {sorted(unknown)}; known: {sorted(s)}')
  s.update(overrides)
  s['sampler'] = SAMPLER_ALIASES.get(s['sampler'], s['sampler'])
  if s['update'] not in UPDATES:
    raise ConfigError(f'sampling.update must be one of {UPDATES}, got {s["update"]!r}')
  if s['prior'] not in PRIORS:
    raise ConfigError(f'sampling.prior must be one of {PRIORS}, got {s["prior"]!r}')
  if config.method == 'pixel_aware':
    k = s['network_calls']
    if not isinstance(k, int) or not 1 <= k <= config.diffusion.num_steps:
      raise ConfigError(f'sampling.network_calls must be an int in 1..diffusion.num_steps='
                        f'{config.diffusion.num_steps}, got {k!r}')
  elif s['distilled'] and s['network_calls'] not in (1, 2):
    raise ConfigError(f"the DDPM baseline's distilled student makes 1 or 2 network calls "
                      f"(sampling.network_calls), got {s['network_calls']!r}")
  if not 0.0 <= float(s['eta']) <= 1.0:
    raise ConfigError(f'sampling.eta must lie in [0, 1], got {s["eta"]!r}')
  return s


def one_head_baseline_config(config: ml_collections.ConfigDict, *, num_steps: int = 1000
                             ) -> ml_collections.ConfigDict:
  """The one-head DDPM baseline on ``config``'s backbone (a new config; ``config`` unchanged).

  Same data and U-Net trunk fields (``model.ch``, ``ch_mult``, ``num_res_blocks``, attention,
  dropout, groups, ``dtype``), same training and optimiser settings; ``method='ddpm'``,
  ``model.name='unet'``, the linear schedule ``1e-4..0.02`` with ``num_steps`` steps (Ho et al.
  2020) and the ``ddpm`` sampler. ``configs/ddpm_fashion_mnist.py`` is this for the main job.
  """
  base = config.copy_and_resolve_references()
  with base.unlocked():
    base.method = 'ddpm'
    base.model.name = 'unet'
    base.diffusion.num_steps = int(num_steps)
    base.diffusion.schedule = 'linear'
    base.diffusion.beta_start = 1e-4
    base.diffusion.beta_end = 0.02
    base.model.num_heads = int(num_steps)
    base.training.vae_steps = 0
    base.sampling.preset = 'custom'
    base.sampling.sampler = 'ddpm'
  return base


def tuples_from_json(node):
  """JSON turns tuples into lists; configs use tuples (hashable Flax module fields)."""
  if isinstance(node, dict):
    return {k: tuples_from_json(v) for k, v in node.items()}
  if isinstance(node, list):
    return tuple(tuples_from_json(v) for v in node)
  return node


def architecture_differences(stored: ml_collections.ConfigDict,
                             config: ml_collections.ConfigDict) -> list[str]:
  """The config sections that make a stored checkpoint unusable and that differ."""
  diffs = []
  for section in _ARCHITECTURE_SECTIONS:
    a = _get(stored, section)
    b = _get(config, section)
    a = a.to_dict() if isinstance(a, ml_collections.ConfigDict) else a
    b = b.to_dict() if isinstance(b, ml_collections.ConfigDict) else b
    for field in _NON_ARCHITECTURE_FIELDS:
      parent, name = field.split('.')
      if parent == section:
        for node in (a, b):
          if isinstance(node, dict):
            node.pop(name, None)
    if json.dumps(tuples_from_json(a), sort_keys=True, default=str) != json.dumps(
        tuples_from_json(b), sort_keys=True, default=str):
      diffs.append(section)
  return diffs


def check_compatible(stored: ml_collections.ConfigDict,
                     config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir with a config whose networks or process differ."""
  diffs = architecture_differences(stored, config)
  if diffs:
    raise ConfigError(
        f'this workdir was trained with a different config in {diffs} (see its config.json); '
        'use a new --workdir or the stored config')


