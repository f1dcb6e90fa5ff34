"""Generation front end: ``get_sample_fn`` and ``load_sampler`` (docs/design.md section 1).

``get_sample_fn(config, batch_size=B)`` returns a pure ``sample_fn(variables, rng) -> images``
(float32 ``[B, H, W, C]`` in ``[0, 1]``) that the caller may ``jax.jit``, ``vmap`` over keys, or
``pmap``; nothing device-specific is baked in. ``variables`` is

* pixel-aware: ``{'vae': vae_params, 'reverse': reverse_params}``
* DDPM baseline: ``{'model': params}``

Pixel-aware generation (the sampler ``'pixel_aware'``):

1. ``prior='standard'`` (paper): ``x_T ~ N(0, I)`` and ``x_delta_hat = G(x_T, T)``.
   ``prior='scale'``: ``z ~ N(0, I)``, ``x_delta_hat = G.decode(z, T)``, then ``x_T`` is drawn
   from the exact per-pixel marginal of eq. 9 at ``i = T`` for that scale.
2. ``network_calls = K`` evaluations of ``R`` at K evenly spaced steps (K = 1 is Algorithm 1),
   each followed by the element-wise recursion (``update='recursion'``) or by a clean-image
   estimate and one DDIM step to the next call (``update='x0_jump'``), see
   ``samplers.block_sequential_reverse``.

The presets ``distilled`` and ``distilled_K2`` (``sampling.distilled=True``) sample with the
distill stage's student (docs/design.md section 7): the same ``variables`` keys, with the
student's parameters in place of the trained model's (``load_sampler`` restores the ``distill``
stage for them). Pixel-aware: ``update='x0_steps'`` with K = 1 or 2; DDPM: 1 or 2 calls of the
student (``diffusion/students.py``).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax.experimental import checkify

from pixdiff_jax import config as config_lib, data, models
from pixdiff_jax.diffusion import parametrisation, samplers, schedules, students
from pixdiff_jax.errors import ConfigError
from pixdiff_jax.storage import checkpointing

PyTree = Any
SampleFn = Callable[[PyTree, jax.Array], jax.Array]


def _image_shape(config, batch_size: int) -> tuple[int, int, int, int]:
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ConfigError(f'batch_size must be a positive int, got {batch_size!r}')
  d = config.data
  return (int(batch_size), d.image_size, d.image_size, d.num_channels)


def to_unit_interval(x0: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
  """Model space -> ``[0, 1]``: ``[eps, 1]`` for pixel-aware, ``[-1, 1]`` for DDPM."""
  return data.to_unit(x0, method=config.method, eps=config.diffusion.eps)


def get_scale_prior_fn(config: ml_collections.ConfigDict, vae, *, batch_size: int) -> SampleFn:
  """``fn(vae_params, rng)``: images ``x0 = -log(G.decode(z, T)) / gamma`` from ``z ~ N(0, I)``.

  What the scale estimator alone generates; the VAE stage's snapshot grid shows it.
  """
  shape = _image_shape(config, batch_size)
  d = config.diffusion

  def fn(vae_params, rng):
    x_delta_hat = models.vae_decode_prior(vae, vae_params, rng, shape[0], num_steps=d.num_steps)
    return to_unit_interval(schedules.x0_from_scale(x_delta_hat, d.gamma), config)

  return fn


def get_sample_fn(config: ml_collections.ConfigDict, *, batch_size: int,
                  sampler: str | None = None, all_heads: bool = False,
                  check_finite: bool = False,
                  **overrides) -> SampleFn:
  """Pure ``sample_fn(variables, rng) -> images [B, H, W, C]`` in ``[0, 1]``, float32.

  Args:
    config: the experiment config (``config.sampling`` gives defaults).
    batch_size: number of images per call.
    sampler: overrides ``config.sampling.sampler`` ('pixel_aware'; or 'ddpm', 'ddim',
      'dpm_solver' for the DDPM baseline).
    all_heads: evaluate all T heads at every network call even when the update reads one
      (the behaviour before heads on demand; same samples, for speed comparisons).
    check_finite: return a *checkified* function instead,
      ``sample_fn(variables, rng) -> (checkify.Error, images)``, that checks that every
      parameter in ``variables`` and every output pixel is finite (NaN parameters otherwise
      give all-NaN images without a word). It composes with ``jit`` and ``vmap``::

        err, images = jax.jit(sample_fn)(variables, key)
        err.throw()  # JaxRuntimeError naming how many values are not finite

    **overrides: any ``config.sampling`` field (``preset``, ``network_calls``, ``eta``,
      ``clip_denoised``, ``prior``, ``update``, ``num_steps``, ``distilled``).
  The static number of network evaluations is ``sample_fn.network_evals``.

  ``variables`` whose arrays do not have the shapes of the networks this config builds (e.g.
  trained with another config) raise a ``ValueError`` that says so, when ``sample_fn`` is
  traced.
  """
  config_lib.validate_config(config)
  if sampler is not None:
    overrides['sampler'] = sampler
  s = config_lib.sampler_settings(config, **overrides)
  if s['sampler'] not in config_lib.SAMPLERS[config.method]:
    raise ConfigError(f'sampler {s["sampler"]!r} is not available for method={config.method!r}; '
                      f'choose one of {config_lib.SAMPLERS[config.method]}')
  shape = _image_shape(config, batch_size)
  if config.method == 'ddpm' and s['distilled']:
    fn, evals = _ddpm_student_sample_fn(config, shape, s)
  elif config.method == 'ddpm':
    fn, evals = _ddpm_family_sample_fn(config, shape, s)
  else:
    fn, evals = _pixel_aware_sample_fn(config, shape, s, all_heads=all_heads)
  if check_finite:
    fn = _checkified(fn)
  fn.network_evals = evals
  fn.settings = dict(s)
  return fn


def _checkified(sample_fn: SampleFn):
  """``(variables, rng) -> (checkify.Error, images)`` with finiteness checks (see above)."""

  def checked(variables, rng):
    leaves = [x for x in jax.tree_util.tree_leaves(variables)
              if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    bad_params = sum((jnp.sum(~jnp.isfinite(x)) for x in leaves), jnp.zeros((), jnp.int32))
    checkify.check(bad_params == 0, 'sample_fn: {n} parameter values in `variables` are not '
                   'finite (NaN or inf): the checkpoint or the training run is broken',
                   n=bad_params)
    images = sample_fn(variables, rng)
    bad = jnp.sum(~jnp.isfinite(images))
    checkify.check(bad == 0, 'sample_fn: {n} output pixel values are not finite (NaN or inf)',
                   n=bad)
    return images

  return checkify.checkify(checked)


def draw_start(config: ml_collections.ConfigDict, vae, vae_params: PyTree, rng: jax.Array,
               batch_size: int, *, prior: str = 'scale'
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(x_T, x_delta_hat, k_loop)``: how pixel-aware generation draws its start from ``rng``.

  ``k_prior, k_xt, k_loop = split(rng, 3)``. ``prior='standard'`` (paper): ``x_T ~ N(0, I)``
  (``k_prior``) and ``x_delta_hat = G(x_T, T)``; ``'scale'``: ``x_delta_hat = G.decode(z, T)``,
  ``z ~ N(0, I)`` (``k_prior``), then ``x_T`` from the exact marginal of eq. 9 at ``i = T``
  (noise ``k_xt``). ``k_loop`` is the reverse loop's key. The distill stage's teacher draws its
  ``x_T`` with this function, so its pairs start where generation starts. Shapes ``[B, H, W, C]``.
  """
  d = config.diffusion
  T, gamma = d.num_steps, d.gamma
  shape = _image_shape(config, batch_size)
  k_prior, k_xt, k_loop = jax.random.split(rng, 3)
  steps_T = jnp.full((shape[0],), T, jnp.int32)
  if prior == 'standard':
    x_T = jax.random.normal(k_prior, shape, jnp.float32)
    x_delta_hat = models.vae_estimate_scale(vae, vae_params, x_T, steps_T)
  else:
    x_delta_hat = models.vae_decode_prior(vae, vae_params, k_prior, shape[0], num_steps=T)
    noise = jax.random.normal(k_xt, shape, jnp.float32)
    ab = schedules.alpha_bar(x_delta_hat, T, T)
    x0_scale = schedules.x0_from_scale(x_delta_hat, gamma)
    x_T = jnp.sqrt(ab) * x0_scale + jnp.sqrt(
        schedules.one_minus_alpha_bar(x_delta_hat, T, T)) * noise
  return x_T, x_delta_hat, k_loop


def reverse_model_fns(net, params: PyTree, batch_size: int, num_steps: int):
  """``(model_fn, head_fn)`` of ``samplers.block_sequential_reverse`` for the reverse model
  with ``params``: all T heads ``[T, B, H, W, C]``, or the one head ``clip(j, 1, T)``."""

  def model_fn(x_j, xd, j):
    steps = jnp.broadcast_to(jnp.asarray(j, jnp.int32), (batch_size,))
    z = net.apply({'params': params}, x_j, xd, steps, train=False)
    return parametrisation.heads_first(z)

  def head_fn(x_j, xd, j):  # head clip(j, 1, T) only (heads on demand)
    steps = jnp.broadcast_to(jnp.asarray(j, jnp.int32), (batch_size,))
    head = jnp.clip(jnp.asarray(j, jnp.int32), 1, num_steps)[None]
    return net.apply({'params': params}, x_j, xd, steps, train=False, heads=head)[:, 0]

  return model_fn, head_fn


def _pixel_aware_sample_fn(config, shape, s, *, all_heads=False):
  d = config.diffusion
  T = d.num_steps
  vae = models.build_vae(config)
  net = models.build_reverse_model(config)
  K = s['network_calls']

  def sample_fn(variables: PyTree, rng: jax.Array) -> jax.Array:
    _check_variables(variables, {'vae': vae, 'reverse': net}, config)
    x_T, x_delta_hat, k_loop = draw_start(config, vae, variables['vae'], rng, shape[0],
                                          prior=s['prior'])
    model_fn, head_fn = reverse_model_fns(net, variables['reverse'], shape[0], T)
    x0 = samplers.block_sequential_reverse(
        model_fn, x_T, x_delta_hat, k_loop, num_steps=T, network_calls=K, eta=s['eta'],
        clip_denoised=s['clip_denoised'], eps=d.eps, update=s['update'], target=d.target,
        head_fn=None if all_heads else head_fn)
    return to_unit_interval(x0, config)

  return sample_fn, K


def _ddpm_student_sample_fn(config, shape, s):
  """The DDPM baseline's distilled student, 1 or 2 calls (``diffusion/students.py``)."""
  net = models.build_reverse_model(config)
  alphas_cumprod = schedules.ddpm_alphas_cumprod(config)
  middle = students.mid_step(alphas_cumprod, int(config.distill.mid_step))

  def sample_fn(variables: PyTree, rng: jax.Array) -> jax.Array:
    _check_variables(variables, {'model': net}, config)

    def x0_fn(x, n):
      steps = jnp.full((shape[0],), n, jnp.int32)
      return net.apply({'params': variables['model']}, x, steps, train=False)

    x0 = students.student_sample(x0_fn, students.draw_x_T(rng, shape),
                                 alphas_cumprod=alphas_cumprod,
                                 network_calls=s['network_calls'], middle=middle,
                                 clip_denoised=s['clip_denoised'])
    return to_unit_interval(x0, config)

  return sample_fn, s['network_calls']


def _ddpm_family_sample_fn(config, shape, s):
  d = config.diffusion
  net = models.build_reverse_model(config)
  alphas_cumprod = schedules.ddpm_alphas_cumprod(config)

  def eps_fn_for(params):
    def eps_fn(x, n):
      steps = jnp.broadcast_to(jnp.asarray(n), (shape[0],))
      return net.apply({'params': params}, x, steps, train=False)
    return eps_fn

  name = s['sampler']
  if name == 'ddpm':
    run = lambda eps_fn, rng: samplers.ddpm_sample(
        eps_fn, rng, shape, alphas_cumprod=alphas_cumprod, clip_denoised=s['clip_denoised'])
    evals = d.num_steps
  elif name == 'ddim':
    run = lambda eps_fn, rng: samplers.ddim_sample(
        eps_fn, rng, shape, alphas_cumprod=alphas_cumprod, num_steps=s['num_steps'],
        eta=s['eta'], clip_denoised=s['clip_denoised'])
    evals = s['num_steps']
  else:
    run = lambda eps_fn, rng: samplers.dpm_solver_pp_2m_sample(
        eps_fn, rng, shape, alphas_cumprod=alphas_cumprod, num_steps=s['num_steps'],
        clip_denoised=s['clip_denoised'])
    evals = s['num_steps']

  def sample_fn(variables: PyTree, rng: jax.Array) -> jax.Array:
    _check_variables(variables, {'model': net}, config)
    return to_unit_interval(run(eps_fn_for(variables['model']), rng), config)

  return sample_fn, evals


def _check_variables(variables, nets: dict, config) -> None:
  """Raises ``ConfigError`` (a ``ValueError``) unless ``variables`` has the keys of ``nets``
  and, for each, arrays with the paths and shapes of that network's parameters
  (``jax.eval_shape``: nothing runs)."""
  keys = list(nets)
  if not isinstance(variables, dict) or set(keys) - set(variables):
    got = sorted(variables) if isinstance(variables, dict) else type(variables).__name__
    raise ValueError(f'variables must be a dict with keys {keys}, got {got}')
  for name, net in nets.items():
    want = checkpointing.shapes_by_path(jax.eval_shape(
        lambda k, net=net: models.init_params(net, config, k), jax.random.PRNGKey(0)))
    got = checkpointing.shapes_by_path(variables[name])
    if got != want:
      raise ConfigError(
          f"variables['{name}'] do not match the network this config builds "
          f'({checkpointing.describe_mismatch(got, want, what="variables")}): they were made '
          'with another config; pass the config they were trained with (e.g. '
          'load_sampler(workdir) reads it from the workdir)')


def load_sampler(workdir: str, *, batch_size: int | None = None, use_ema: bool | None = None,
                 **overrides) -> tuple[SampleFn, PyTree]:
  """Builds ``sample_fn`` from a training workdir and restores its (EMA) parameters.

  Returns ``(sample_fn, variables)``: ``jax.jit(sample_fn)(variables, key)`` gives images.
  ``sample_fn.checkpoint_steps`` maps each stage to the step of the checkpoint it restored (the
  newest readable one; unreadable newer steps are moved aside with a warning, see
  ``checkpointing``). ``**overrides`` go to :func:`get_sample_fn` (including ``check_finite``).
  """
  workdir = os.fspath(workdir)
  config = config_lib.load_config(workdir)
  batch_size = batch_size or config.sampling.batch_size
  use_ema = config.sampling.use_ema if use_ema is None else use_ema
  sample_fn = get_sample_fn(config, batch_size=batch_size, **overrides)
  distilled = sample_fn.settings['distilled']
  if distilled:
    check_distill_stage(config, workdir)
  variables, steps = {}, {}
  for key, stage in network_stages(config, distilled=distilled).items():
    variables[key], steps[stage] = checkpointing.load_stage(config, workdir, stage,
                                                            use_ema=use_ema)
  sample_fn.checkpoint_steps = steps
  return sample_fn, variables


def network_stages(config: ml_collections.ConfigDict, *, distilled: bool = False
                   ) -> dict[str, str]:
  """``{variables key: training stage}`` a sampler restores: pixel-aware ``{'vae': 'vae',
  'reverse': 'reverse' or 'distill'}``, DDPM ``{'model': 'ddpm' or 'distill'}``."""
  if config.method == 'ddpm':
    return {'model': 'distill' if distilled else 'ddpm'}
  return {'vae': 'vae', 'reverse': 'distill' if distilled else 'reverse'}


def check_distill_stage(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A ``FileNotFoundError`` naming the command that trains it unless ``workdir`` has a
  checkpoint of the distill stage."""
  stage_dir = checkpointing.stage_dir(workdir, 'distill')
  if 'distill' in checkpointing.stages_for(config) and os.path.isdir(stage_dir) and any(
      name.isdigit() for name in os.listdir(stage_dir)):
    return
  steps = '' if 'distill' in checkpointing.stages_for(config) else ' --config.distill.steps=N'
  raise FileNotFoundError(
      f'the distilled presets need the distill stage, and {workdir} has no checkpoint of it; '
      f'train it with `python main.py --workdir {workdir} --stage distill{steps}`')
