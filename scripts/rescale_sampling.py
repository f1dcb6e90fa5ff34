"""Does re-estimating the image scale during generation let the reverse model add detail?

    python scripts/rescale_sampling.py --workdir runs/fmnist [--n 1000] [--out FILE.json]

``scripts/diagnose_reverse.py`` finds that, during generation with the ``consistent`` preset,
every clean-image estimate stays within RMSE ~0.065 of the VAE's prior decode and keeps its blur,
although on real noisy images the same heads halve the VAE's error: the generator conditions the
heads on the prior decode and fixes the per-pixel schedule to it for the whole trajectory, while
training conditioned them on ``G(x_i, i)``, the VAE's estimate FROM THE CURRENT NOISY IMAGE.
This script compares, for a workdir trained with ``diffusion.target='x0'``, sampler variants that
differ only in where the scale comes from at each call (all ``x0_jump``, one call per step,
eta 0, clean-image estimate clipped into ``[eps, 1]``, the same prior draw and x_T):

* ``fixed``: conditioning and schedule = the prior decode (= today's ``consistent`` preset; the
  script checks that it reproduces ``get_sample_fn``'s images);
* ``cond_vae``: conditioning ``G(x_t, t)`` at every call (as in training), schedule fixed;
* ``both_vae``: conditioning and schedule ``G(x_t, t)``;
* ``sched_head``: conditioning ``G(x_t, t)``, schedule ``exp(-gamma x0_hat)`` of the call's own
  clean-image estimate.

Two more rows split the blame between the first stage and the reverse model. They start from a
REAL ``x_T``, drawn from eq. 9 for a training image (not from the VAE's prior), and use only
what a sampler could know from it: conditioning and schedule ``G(x_T, T)``:

* ``real_xT_vae``: the VAE's clean image ``-log(G(x_T, T)) / gamma``, no reverse model;
* ``real_xT``: the ``fixed`` sampler above from that ``x_T`` and scale.

If ``real_xT`` scores far better than ``fixed``, the reverse model can make good images and what
holds the samples back is the distribution of ``x_T`` that the VAE's prior produces.

Per variant: FD_efflite0 against the full test split (n samples; the real-vs-real floor at the
same n beside it) and the high-frequency energy relative to real images. Writes the grids as PNGs
next to the JSON.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import pixdiff_jax
from pixdiff_jax import data, metrics, models
from pixdiff_jax.diffusion import schedules
from pixdiff_jax.utils import image_grid
# benchmarks/ is the script's own folder, so its sibling module imports directly.
from quality_util import laplacian_energy, load_x0_workdir

flags.DEFINE_string('workdir', None, 'Trained pixel-aware workdir (target x0).', required=True)
flags.DEFINE_integer('n', 1000, 'Number of generated images per variant.')
flags.DEFINE_integer('batch_size', 250, 'Images per sampler call.')
flags.DEFINE_integer('seed', 0, 'Sampling seed.')
flags.DEFINE_string('out', None, 'JSON output (default: WORKDIR/rescale_sampling.json).')
flags.DEFINE_list('variants', None, 'Variants to run (default: all of them, in order).')
FLAGS = flags.FLAGS

VARIANTS = ('fixed', 'cond_vae', 'both_vae', 'sched_head', 'real_xT_vae', 'real_xT')
flags.register_validator('variants', lambda v: v is None or set(v) <= set(VARIANTS),
                         f'--variants: a comma-separated subset of {",".join(VARIANTS)}')


def make_sampler(config, batch: int, variant: str):
  """``fn(variables, rng, x0_real) -> x0 [B, H, W, C]`` in ``[eps, 1]``; rng use as in
  get_sample_fn; ``x0_real`` (``[B, H, W, C]`` in ``[eps, 1]``) is read by the ``real_xT*``
  variants only."""
  d = config.diffusion
  T, gamma, eps = d.num_steps, d.gamma, d.eps
  vae, net = models.build_vae(config), models.build_reverse_model(config)
  shape = (batch, config.data.image_size, config.data.image_size, config.data.num_channels)

  def fn(variables, rng, x0_real):
    k_prior, k_xt, _ = jax.random.split(rng, 3)
    noise = jax.random.normal(k_xt, shape, jnp.float32)
    if variant.startswith('real_xT'):
      x = schedules.q_sample(x0_real, T, noise, gamma=gamma, num_steps=T)
      xd0 = models.vae_estimate_scale(vae, variables['vae'], x, jnp.full((batch,), T, jnp.int32))
      if variant == 'real_xT_vae':
        return jnp.clip(schedules.x0_from_scale(xd0, gamma), eps, 1.0)
    else:
      xd0 = models.vae_decode_prior(vae, variables['vae'], k_prior, batch, num_steps=T)
      x = (jnp.sqrt(schedules.alpha_bar(xd0, T, T)) * schedules.x0_from_scale(xd0, gamma)
           + jnp.sqrt(schedules.one_minus_alpha_bar(xd0, T, T)) * noise)

    def step(x, t):
      steps = jnp.full((batch,), t, jnp.int32)
      cond = xd0 if variant in ('fixed', 'real_xT') else models.vae_estimate_scale(
          vae, variables['vae'], x, steps)
      z = net.apply({'params': variables['reverse']}, x, cond, steps, train=False)
      x0_hat = jnp.clip(jax.lax.dynamic_index_in_dim(z, t - 1, 1, keepdims=False), eps, 1.0)
      if variant in ('fixed', 'cond_vae', 'real_xT'):
        xd = xd0
      elif variant == 'both_vae':
        xd = cond
      else:
        xd = schedules.image_scale(x0_hat, gamma)
      ab_hi, ab_lo = schedules.alpha_bar(xd, t, T), schedules.alpha_bar(xd, t - 1, T)
      om_hi = schedules.one_minus_alpha_bar(xd, t, T)
      om_lo = schedules.one_minus_alpha_bar(xd, t - 1, T)
      c_eps = jnp.sqrt(om_lo / jnp.maximum(om_hi, 1e-30))
      x_lo = jnp.sqrt(ab_lo) * x0_hat + c_eps * (x - jnp.sqrt(ab_hi) * x0_hat)
      return x_lo, None

    x, _ = jax.lax.scan(step, x, jnp.arange(T, 0, -1, dtype=jnp.int32))
    return x

  return jax.jit(fn)


def main(argv):
  del argv
  FLAGS.variants = FLAGS.variants or list(VARIANTS)
  config = load_x0_workdir(FLAGS.workdir)
  b = FLAGS.batch_size
  ref_fn, variables = pixdiff_jax.load_sampler(FLAGS.workdir, batch_size=b, preset='consistent',
                                               network_calls=config.diffusion.num_steps)
  key = jax.random.PRNGKey(FLAGS.seed)
  real = data.scale_images(data.load_images(config, split='test')[:FLAGS.n],
                           method='pixel_aware', eps=config.diffusion.eps)
  hf_real = laplacian_energy(real)
  ex = metrics.get_feature_extractor('efflite0')
  floor = metrics.real_floor(ex, FLAGS.n, dataset='fashion_mnist', split='test')
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'rescale_sampling.json')
  # x_T of the real_xT rows: the first n training images (the FD reference is the test split).
  train = data.scale_images(data.load_images(config, split='train')[:-(-FLAGS.n // b) * b],
                            method='pixel_aware', eps=config.diffusion.eps)
  rows = []
  for variant in FLAGS.variants:
    fn = make_sampler(config, b, variant)
    chunks = [np.asarray(fn(variables, jax.random.fold_in(key, k), train[k * b:(k + 1) * b]))
              for k in range(-(-FLAGS.n // b))]
    x0 = np.concatenate(chunks)[:FLAGS.n]
    if variant == 'fixed':  # must be today's consistent preset, image for image
      ref = np.asarray(jax.jit(ref_fn)(variables, jax.random.fold_in(key, 0)))
      unit = np.asarray(data.to_unit(chunks[0], method='pixel_aware', eps=config.diffusion.eps))
      err = float(np.max(np.abs(ref - unit)))
      print(f'fixed vs get_sample_fn(consistent): max abs diff {err:.2e}')
    u8 = data.to_uint8(x0, method='pixel_aware', eps=config.diffusion.eps)
    fd = metrics.fd_efflite0(u8, dataset='fashion_mnist', split='test')
    row = {'variant': variant, 'n': FLAGS.n, 'fd_efflite0': fd, 'floor': floor,
           'hf_relative': laplacian_energy(x0) / hf_real}
    rows.append(row)
    print(json.dumps(row))
    image_grid.save_grid(os.path.splitext(out)[0] + f'_{variant}.png', u8[:64])
    with open(out, 'w') as f:
      json.dump(rows, f, indent=1)
  print('wrote', out)


if __name__ == '__main__':
  app.run(main)
