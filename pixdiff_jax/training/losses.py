"""Training losses, as pure single-device functions (the caller picks jit / pmap / vmap).

Every factory returns ``loss_fn(params, batch_x0, rng, *, train=True, ...) -> (loss, metrics)``:

* ``params``: the ``'params'`` collection of the network being trained;
* ``batch_x0``: clean images ``[B, H, W, C]`` float32, in ``[eps, 1]`` for the pixel-aware
  losses and in ``[-1, 1]`` for the DDPM baseline (what ``pixdiff_jax.data`` yields for
  ``config.method``);
* ``rng``: one PRNG key for this call; every random draw of the loss is derived from it;
* ``loss``: scalar float32; ``metrics``: dict of scalar float32 arrays (``loss`` not included).

Use it as ``jax.value_and_grad(loss_fn, has_aux=True)(params, batch_x0, rng, ...)``.

Steps are drawn uniformly per example: ``i ~ U{1..T}`` (pixel-aware), ``n ~ U{1..T}`` (DDPM).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jaxtyping import Array, Float, Int

from pixdiff_jax import models
from pixdiff_jax.config import LOSS_WEIGHTINGS, SCALE_SOURCES, VAE_LOSS_SPACES
from pixdiff_jax.diffusion import schedules
from pixdiff_jax.diffusion.samplers import TARGETS as _TARGETS
from pixdiff_jax.errors import ConfigError

__all__ = ['get_vae_loss_fn', 'get_reverse_loss_fn', 'get_ddpm_loss_fn',
           'sample_reverse_example', 'select_heads', 'gaussian_kl']

PyTree = Any
Metrics = dict[str, Array]
LossFn = Callable[..., tuple[Array, Metrics]]


def _uniform_steps(rng: jax.Array, batch_size: int, num_steps: int) -> Int[Array, 'B']:
  """``[B]`` int32 steps uniform in ``1..num_steps``."""
  return jax.random.randint(rng, (batch_size,), 1, num_steps + 1, dtype=jnp.int32)


def _bcast(v: Array, x: Array) -> Array:
  """Reshapes per-example ``[B]`` values to broadcast against ``[B, ...]``."""
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def gaussian_kl(mean: Float[Array, 'B L'], logvar: Float[Array, 'B L']) -> Float[Array, 'B']:
  """``KL(N(mean, exp(logvar)) || N(0, I))`` per example, summed over latent dims (nats)."""
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


# ---------------------------------------------------------------------------- stage 1: VAE
def get_vae_loss_fn(config: ml_collections.ConfigDict, vae: models.ScaleVAE) -> LossFn:
  """Loss of the scale estimator ``G``: MSE on ``x_delta`` (or on ``x0``) plus a weighted KL.

  ``loss_fn(params, batch_x0, rng, *, train=True) -> (loss, metrics)``:

  * ``i ~ U{1..T}`` per example, ``x_i = q_sample(x0, i, noise)`` (eq. 9);
  * ``x_delta_hat, mean, logvar = G(x_i, i)``, with a posterior sample (rng stream ``'latent'``)
    when ``train`` and the posterior mean otherwise;
  * ``mse`` = mean over all pixels of ``(x_delta_hat - exp(-gamma x0))**2`` with
    ``vae.loss_space='scale'`` (docs/design.md 2); with ``'x0'`` of ``(x0_hat - x0)**2``, where
    ``x0_hat = -log(x_delta_hat) / gamma``. The scale-space error hardly sees bright pixels:
    ``d x_delta / d x0 = -gamma exp(-gamma x0)`` is ``4.5e-4`` at ``x0 = 1``, ``gamma = 10``;
  * ``kl`` = ``KL(q(z | x_i) || N(0, I))`` in nats per example (summed over the latent, mean over
    the batch); the loss uses it per pixel, ``kl_per_pixel = kl / (H W C)``, so that
    ``loss = mse + vae.kl_weight * kl_per_pixel`` is the negative ELBO of a Gaussian decoder of
    variance ``kl_weight / 2`` (per pixel), whatever the image or latent size.

  Random draws: ``rng_i, rng_noise, rng_latent = jax.random.split(rng, 3)``.
  Metrics: ``mse``, ``kl``, ``kl_per_pixel``, ``x0_mae`` (mean ``|x0_hat - x0|`` implied by the
  scale, in image units).
  """
  d = config.diffusion
  gamma, num_steps = float(d.gamma), int(d.num_steps)
  schedules.check_pixel_aware_args(gamma=gamma, num_steps=num_steps)
  kl_weight = float(config.vae.kl_weight)
  if kl_weight < 0:
    raise ConfigError(f'vae.kl_weight={kl_weight} must be >= 0')
  loss_space = config.vae.get('loss_space', 'scale')
  if loss_space not in VAE_LOSS_SPACES:
    raise ConfigError(f'vae.loss_space must be one of {VAE_LOSS_SPACES}, got {loss_space!r}')

  def loss_fn(params: PyTree, batch_x0: Float[Array, 'B H W C'], rng: jax.Array, *,
              train: bool = True) -> tuple[Array, Metrics]:
    x0 = jnp.asarray(batch_x0, jnp.float32)
    rng_i, rng_noise, rng_latent = jax.random.split(rng, 3)
    i = _uniform_steps(rng_i, x0.shape[0], num_steps)
    noise = jax.random.normal(rng_noise, x0.shape, x0.dtype)
    x_i = schedules.q_sample(x0, _bcast(i, x0), noise, gamma=gamma, num_steps=num_steps)
    x_delta_hat, mean, logvar = vae.apply({'params': params}, x_i, i, sample_posterior=train,
                                          rngs={'latent': rng_latent})
    x0_hat = schedules.x0_from_scale(x_delta_hat, gamma)
    if loss_space == 'scale':
      mse = jnp.mean(jnp.square(x_delta_hat - schedules.image_scale(x0, gamma)))
    else:
      mse = jnp.mean(jnp.square(x0_hat - x0))
    kl = jnp.mean(gaussian_kl(mean, logvar))
    kl_per_pixel = kl / np.prod(x0.shape[1:])
    loss = mse + kl_weight * kl_per_pixel
    x0_mae = jnp.mean(jnp.abs(x0_hat - x0))
    return loss, {'mse': mse, 'kl': kl, 'kl_per_pixel': kl_per_pixel, 'x0_mae': x0_mae}

  return loss_fn


# ---------------------------------------------------------------------------- stage 2: R
def sample_reverse_example(config: ml_collections.ConfigDict, batch_x0: Float[Array, 'B H W C'],
                           rng: jax.Array) -> dict[str, Array]:
  """Draws the reverse model's training inputs and targets for a batch.

  ``rng_i, rng_chain = jax.random.split(rng)``; ``i = randint(rng_i, [B], 1, T + 1)``; ONE forward
  chain per image, ``xs, e = schedules.forward_chain(rng_chain, x0)``; its own ``x_i`` is the
  network input and ``schedules.chain_targets(xs, e, x0, target=config.diffusion.target)`` are
  the head targets.

  Returns:
    dict with ``i`` ``[B]`` int32, ``x_i`` ``[B, H, W, C]``, the chain's last state ``x_T``
    ``[B, H, W, C]``, ``targets`` ``[B, T, H, W, C]``
    (index ``j-1`` is head ``j``) and ``mask`` ``[B, T]`` bool (``j <= i``).
  """
  d = config.diffusion
  gamma, num_steps = float(d.gamma), int(d.num_steps)
  x0 = jnp.asarray(batch_x0, jnp.float32)
  batch = x0.shape[0]
  rng_i, rng_chain = jax.random.split(rng)
  i = _uniform_steps(rng_i, batch, num_steps)
  xs, e = schedules.forward_chain(rng_chain, x0, gamma=gamma, num_steps=num_steps)
  x_i = xs[i, jnp.arange(batch)]
  targets = schedules.chain_targets(xs, e, x0, gamma=gamma, num_steps=num_steps,
                                    target=d.target)
  return {'i': i, 'x_i': x_i, 'x_T': xs[num_steps], 'targets': jnp.moveaxis(targets, 0, 1),
          'mask': models.head_mask(i, num_steps)}


def select_heads(rng: jax.Array, i: Int[Array, 'B'], *, num_steps: int, heads_per_example: int,
                 diagonal_weight: float = 1.0) -> tuple[Int[Array, 'B n'], Float[Array, 'B n']]:
  """An unbiased subsample of each example's active heads, for the reverse loss.

  Slot 0 is the diagonal head ``j = i`` (weight ``diagonal_weight``); slots ``1..n-1``
  (``n = heads_per_example >= 2``) are ``c = min(n - 1, i - 1)`` distinct heads drawn uniformly
  without replacement from ``{1..i-1}``, each of weight ``(i - 1) / c`` (so that the expected
  weight of every active head ``j < i`` is 1); slots beyond ``c`` repeat the diagonal head with
  weight 0. Hence ``E[sum_m w[b, m] f(heads[b, m])] = w_diag f(i_b) + sum_{j < i_b} f(j)`` for
  any per-head function ``f``, and with ``n >= T`` every active head is selected with weight 1.

  Returns:
    ``(heads [B, n] int32 in 1..T, weights [B, n] float32)``.
  """
  n = int(heads_per_example)
  if n < 2:
    raise ValueError(f'heads_per_example must be >= 2 (the diagonal head plus at least one '
                     f'other active head), got {n}')
  batch = i.shape[0]
  j = jnp.arange(1, num_steps + 1, dtype=jnp.int32)
  u = jax.random.uniform(rng, (batch, num_steps))
  u = jnp.where(j[None, :] < i[:, None], u, 2.0)  # candidates j < i first, in random order
  others = jnp.argsort(u, axis=1)[:, :n - 1].astype(jnp.int32) + 1
  if others.shape[1] < n - 1:  # n - 1 > T: pad (these slots are never valid)
    others = jnp.pad(others, ((0, 0), (0, n - 1 - others.shape[1])), constant_values=1)
  c = jnp.minimum(n - 1, i - 1)
  valid = jnp.arange(n - 1)[None, :] < c[:, None]
  w_others = jnp.where(valid, ((i - 1) / jnp.maximum(c, 1)).astype(jnp.float32)[:, None], 0.0)
  heads = jnp.concatenate([i[:, None], jnp.where(valid, others, i[:, None])], axis=1)
  weights = jnp.concatenate([jnp.full((batch, 1), diagonal_weight, jnp.float32), w_others],
                            axis=1)
  return heads, weights


def get_reverse_loss_fn(config: ml_collections.ConfigDict, model: models.THeadUNet,
                        vae: models.ScaleVAE | None = None) -> LossFn:
  """Loss of the T-headed reverse model ``R`` (eq. 15 with the head mask of eq. 14).

  ``loss_fn(params, batch_x0, rng, *, vae_params=None, train=True) -> (loss, metrics)``:

  * ``rng_example, rng_dropout = jax.random.split(rng)``; ``i``, ``x_i``, targets and mask from
    :func:`sample_reverse_example` ``(config, batch_x0, rng_example)``;
  * scale input: ``config.diffusion.scale_source='vae'``: the frozen VAE's deterministic estimate
    ``stop_gradient(G(x_i, i))`` (posterior mean; ``vae`` and ``vae_params`` required);
    ``'vae_at_T'``: the same VAE's estimate from the END of the same chain, ``G(x_T, T)``, for
    every step: like the scale prior at sampling time, one blurry estimate per image that no
    step sharpens (the generation-side conditioning, as DiffuseVAE (Pandey et al. 2022) trains
    its refiner on the VAE's own reconstructions); ``'true'``: ``exp(-gamma x0)``;
  * ``Z = R(x_i, x_delta_hat, i)`` (heads ``j > i`` are exactly 0 inside the model), dropout rng
    stream ``'dropout'`` when ``train``;
  * normalisation: the loss is the mean squared error per pixel over the ACTIVE (example, head)
    pairs, ``sum_{b, j <= i_b} mean_pix (Z^j_b - target^j_b)**2 / sum_b i_b``. Every active
    head term has the same weight, so the gradient is that of eq. 15's sum over heads
    ``sum_j L(phi, j)`` up to one positive factor per batch; inactive heads contribute exactly
    nothing (neither value nor gradient). ``diffusion.diagonal_weight = w`` (default 1, the
    paper) weighs the diagonal head ``j = i`` of each example ``w`` times (the one head that
    the ``x0_jump`` sampler reads at step ``i``): ``sum (se * W) / sum W`` with ``W = mask``
    plus ``w - 1`` at ``(b, i_b)``.
  * ``config.diffusion.heads_per_example = n``: ``0`` (default) evaluates all T heads and
    masks them as above. ``n >= 2`` evaluates only ``n`` heads per example (``THeadUNet(...,
    heads=)``): the diagonal head and ``n - 1`` random active heads chosen and weighted by
    :func:`select_heads` (key ``fold_in(rng, 1)``, or ``heads_rng``); the numerator is
    ``sum_{b, m} w[b, m] se[b, m]`` and the denominator the same ``sum W`` as above, so the
    expected loss (and gradient) over the draw equals the full loss; with ``n >= T`` it IS
    the full loss. The heads cost ``n / T`` of the full evaluation.
  * ``config.diffusion.loss_weighting='min_snr'``: each pixel's squared error (every head of
    the example alike) is multiplied by
    :func:`pixdiff_jax.diffusion.schedules.min_snr_weight` at the
    example's step ``i`` (``snr_gamma = diffusion.min_snr_gamma``; the per-pixel schedule of the
    true ``x0``) before the mean over pixels; ``'none'`` (default) weighs every pixel 1.

  Metrics: ``mse_head_1`` (head 1, active for every example; full evaluation only),
  ``mse_head_i`` (head ``j = i``, the first one Algorithm 1 uses), ``active_heads`` (mean
  number of active heads).
  """
  d = config.diffusion
  gamma, num_steps = float(d.gamma), int(d.num_steps)
  if d.target not in _TARGETS:
    raise ConfigError(f'diffusion.target={d.target!r} is unknown; known: {list(_TARGETS)}')
  if d.scale_source not in SCALE_SOURCES:
    raise ConfigError(f'diffusion.scale_source={d.scale_source!r} is unknown; known: '
                      f'{list(SCALE_SOURCES)}')
  if d.scale_source != 'true' and vae is None:
    raise ValueError(f'diffusion.scale_source={d.scale_source!r} needs the stage-1 VAE: pass vae=')
  if getattr(model, 'num_heads', num_steps) != num_steps:
    raise ValueError(f'model has {model.num_heads} heads but diffusion.num_steps={num_steps}')

  diagonal_weight = float(d.get('diagonal_weight', 1.0))
  if not diagonal_weight > 0:
    raise ConfigError(f'diffusion.diagonal_weight must be > 0, got {diagonal_weight!r}')
  weighting = d.get('loss_weighting', 'none')
  if weighting not in LOSS_WEIGHTINGS:
    raise ConfigError(f'diffusion.loss_weighting={weighting!r} is unknown; known: '
                      f'{list(LOSS_WEIGHTINGS)}')
  heads_per_example = int(d.get('heads_per_example', 0))
  if heads_per_example == 1 or heads_per_example < 0:
    raise ConfigError(f'diffusion.heads_per_example must be 0 (all active heads) or >= 2, got '
                      f'{heads_per_example}')

  def loss_fn(params: PyTree, batch_x0: Float[Array, 'B H W C'], rng: jax.Array, *,
              vae_params: PyTree = None, train: bool = True,
              heads_rng: jax.Array | None = None) -> tuple[Array, Metrics]:
    x0 = jnp.asarray(batch_x0, jnp.float32)
    rng_example, rng_dropout = jax.random.split(rng)
    ex = sample_reverse_example(config, x0, rng_example)
    i, x_i = ex['i'], ex['x_i']
    if d.scale_source in ('vae', 'vae_at_T'):
      if vae_params is None:
        raise ValueError(f'diffusion.scale_source={d.scale_source!r} needs the frozen VAE: pass '
                         'vae_params=')
      if d.scale_source == 'vae':
        x_in, i_in = x_i, i
      else:
        x_in, i_in = ex['x_T'], jnp.full_like(i, num_steps)
      x_delta_hat = jax.lax.stop_gradient(models.vae_estimate_scale(vae, vae_params, x_in, i_in))
    else:
      x_delta_hat = schedules.image_scale(x0, gamma)
    if weighting == 'min_snr':  # [B, 1, H, W, C]: one weight per pixel, every head alike
      pixel_w = schedules.min_snr_weight(
          schedules.image_scale(x0, gamma), _bcast(i, x0), num_steps,
          snr_gamma=float(d.get('min_snr_gamma', 5.0)), target=d.target)[:, None]
    else:
      pixel_w = 1.0
    if heads_per_example:
      heads, w = select_heads(jax.random.fold_in(rng, 1) if heads_rng is None else heads_rng,
                              i, num_steps=num_steps, heads_per_example=heads_per_example,
                              diagonal_weight=diagonal_weight)
      z = model.apply({'params': params}, x_i, x_delta_hat, i, train=train, heads=heads,
                      rngs={'dropout': rng_dropout})  # [B, n, H, W, C]
      targets = jnp.take_along_axis(ex['targets'], (heads - 1)[:, :, None, None, None], axis=1)
      se = jnp.mean(pixel_w * jnp.square(z - targets), axis=(2, 3, 4))  # [B, n]
      denominator = jnp.sum(i.astype(se.dtype)) + x0.shape[0] * (diagonal_weight - 1.0)
      loss = jnp.sum(se * w) / denominator
      return loss, {'mse_head_i': jnp.mean(se[:, 0]),
                    'active_heads': jnp.mean(i.astype(se.dtype))}
    z = model.apply({'params': params}, x_i, x_delta_hat, i, train=train,
                    rngs={'dropout': rng_dropout})
    se = jnp.mean(pixel_w * jnp.square(z - ex['targets']), axis=(2, 3, 4))  # [B, T]
    mask = ex['mask'].astype(se.dtype)
    num_active = jnp.sum(mask)
    batch = jnp.arange(x0.shape[0])
    weight = mask.at[batch, i - 1].add(diagonal_weight - 1.0)
    loss = jnp.sum(se * weight) / jnp.sum(weight)
    return loss, {'mse_head_1': jnp.mean(se[:, 0]), 'mse_head_i': jnp.mean(se[batch, i - 1]),
                  'active_heads': num_active / x0.shape[0]}

  return loss_fn


# ---------------------------------------------------------------------------- DDPM baseline
def get_ddpm_loss_fn(config: ml_collections.ConfigDict, model: models.UNet) -> LossFn:
  """Epsilon-prediction loss of the one-head baseline (Ho et al. 2020, ``L_simple``).

  ``loss_fn(params, batch_x0, rng, *, train=True) -> (loss, metrics)`` with ``batch_x0`` in
  ``[-1, 1]``: ``rng_n, rng_noise, rng_dropout = jax.random.split(rng, 3)``; ``n ~ U{1..T}``;
  ``x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) noise`` with ``abar`` from
  :func:`pixdiff_jax.models.ddpm_alphas_cumprod` (``config.diffusion.schedule``); the model is
  called with the step number ``n``; loss = mean squared error to ``noise`` over all pixels.

  Metrics: ``mse`` (same as the loss).
  """
  abar = models.ddpm_alphas_cumprod(config)
  num_steps = abar.shape[0]
  sqrt_ab = jnp.asarray(np.sqrt(abar), jnp.float32)
  sqrt_1mab = jnp.asarray(np.sqrt(1.0 - abar), jnp.float32)

  def loss_fn(params: PyTree, batch_x0: Float[Array, 'B H W C'], rng: jax.Array, *,
              train: bool = True) -> tuple[Array, Metrics]:
    x0 = jnp.asarray(batch_x0, jnp.float32)
    rng_n, rng_noise, rng_dropout = jax.random.split(rng, 3)
    n = _uniform_steps(rng_n, x0.shape[0], num_steps)
    noise = jax.random.normal(rng_noise, x0.shape, x0.dtype)
    x_n = _bcast(sqrt_ab[n - 1], x0) * x0 + _bcast(sqrt_1mab[n - 1], x0) * noise
    eps_hat = model.apply({'params': params}, x_n, n, train=train, rngs={'dropout': rng_dropout})
    mse = jnp.mean(jnp.square(eps_hat - noise))
    return mse, {'mse': mse}

  return loss_fn
