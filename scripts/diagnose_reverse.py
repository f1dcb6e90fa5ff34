"""Why does the reverse model add so little over its VAE?  Measurements on a trained workdir.

    python scripts/diagnose_reverse.py --workdir runs/fmnist [--n 512] [--out FILE.json]

For a pixel-aware workdir trained with ``diffusion.target='x0'`` (every head predicts the clean
image), on ``n`` test images:

1. Per step ``i = 1..T`` (one forward draw ``x_i = q_sample(x0, i)`` per image):
   ``mse_vae``: the VAE's own clean-image estimate ``x0_from_scale(G(x_i, i))`` against ``x0``;
   ``mse_head``: the diagonal head ``j = i`` of ``R(x_i, G(x_i, i), i)`` (what ``x0_jump``
   reads at step i); ``mse_head_true_scale``: the same head fed the TRUE scale
   ``exp(-gamma x0)`` (how much a perfect scale would help); ``gain = 1 - mse_head / mse_vae``;
   ``hf_vae`` / ``hf_head``: high-frequency energy (mean squared 4-neighbour Laplacian) of each
   estimate relative to that of the real images (1 = as sharp as the data, < 1 = blurrier).
2. The generation trajectory of the ``consistent`` preset (VAE prior scale, ``x0_jump`` with one
   call per step, eta 0, clipping): at each call ``t_k`` the clean-image estimate's RMSE from the
   VAE prior decode (``x0_scale``, what the VAE alone would output) and its relative
   high-frequency energy. If the estimates never leave ``x0_scale`` the reverse model only
   copies the VAE.
3. Convergence: the reverse stage's logged loss, mean over the first and the last tenth of
   training and over the two halves of the last fifth (a still-falling loss = under-trained).
Prints a table and writes JSON.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import pixdiff_jax
from pixdiff_jax import data, models
from pixdiff_jax.diffusion import schedules
# benchmarks/ is the script's own folder, so its sibling module imports directly.
from quality_util import laplacian_energy, load_x0_workdir

flags.DEFINE_string('workdir', None, 'Trained pixel-aware workdir (target x0).', required=True)
flags.DEFINE_integer('n', 512, 'Number of test images / generated images.')
flags.DEFINE_integer('seed', 0, 'Seed of the forward draws and the generation.')
flags.DEFINE_string('out', None, 'JSON output file (default: WORKDIR/diagnose_reverse.json).')
FLAGS = flags.FLAGS


def per_step(config, variables, x0: np.ndarray, rng: jax.Array) -> list[dict]:
  d = config.diffusion
  T, gamma = d.num_steps, d.gamma
  vae, net = models.build_vae(config), models.build_reverse_model(config)

  @jax.jit  # parameters as arguments (closed-over arrays would be constant-folded by XLA)
  def estimates(variables, x0, i, noise):
    steps = jnp.full((x0.shape[0],), i, jnp.int32)
    x_i = schedules.q_sample(x0, i, noise, gamma=gamma, num_steps=T)
    xd_vae = models.vae_estimate_scale(vae, variables['vae'], x_i, steps)
    z = net.apply({'params': variables['reverse']}, x_i, xd_vae, steps, train=False)
    z_true = net.apply({'params': variables['reverse']}, x_i, schedules.image_scale(x0, gamma),
                       steps, train=False)
    head = lambda z: jax.lax.dynamic_index_in_dim(z, i - 1, 1, keepdims=False)
    return schedules.x0_from_scale(xd_vae, gamma), head(z), head(z_true)

  hf_real = laplacian_energy(x0)
  rows = []
  for i in range(1, T + 1):
    noise = jax.random.normal(jax.random.fold_in(rng, i), x0.shape, jnp.float32)
    x0_vae, x0_head, x0_head_true = map(
        np.asarray, estimates(variables, jnp.asarray(x0), jnp.int32(i), noise))
    mse = lambda e: float(np.mean(np.square(e.astype(np.float64) - x0)))
    rows.append({'step': i, 'mse_vae': mse(x0_vae), 'mse_head': mse(x0_head),
                 'mse_head_true_scale': mse(x0_head_true),
                 'gain': 1.0 - mse(x0_head) / mse(x0_vae),
                 'hf_vae': laplacian_energy(x0_vae) / hf_real,
                 'hf_head': laplacian_energy(x0_head) / hf_real})
  return rows


def trajectory(config, variables, n: int, rng: jax.Array, hf_real: float) -> list[dict]:
  """Replays the consistent preset call by call (K = T, eta = 0, clipping)."""
  d = config.diffusion
  T, gamma, eps = d.num_steps, d.gamma, d.eps
  vae, net = models.build_vae(config), models.build_reverse_model(config)
  shape = (n, config.data.image_size, config.data.image_size, config.data.num_channels)
  k_prior, k_xt = jax.random.split(rng)
  xd = models.vae_decode_prior(vae, variables['vae'], k_prior, n, num_steps=T)
  x0_scale = schedules.x0_from_scale(xd, gamma)
  noise = jax.random.normal(k_xt, shape, jnp.float32)
  x = (jnp.sqrt(schedules.alpha_bar(xd, T, T)) * x0_scale
       + jnp.sqrt(schedules.one_minus_alpha_bar(xd, T, T)) * noise)

  @jax.jit
  def call(params, xd, x, t):
    steps = jnp.full((n,), t, jnp.int32)
    z = net.apply({'params': params}, x, xd, steps, train=False)
    x0_hat = jnp.clip(jax.lax.dynamic_index_in_dim(z, t - 1, 1, keepdims=False), eps, 1.0)
    # DDIM step of the per-pixel schedule, eta = 0, to t - 1.
    ab_hi, ab_lo = schedules.alpha_bar(xd, t, T), schedules.alpha_bar(xd, t - 1, T)
    om_hi, om_lo = (schedules.one_minus_alpha_bar(xd, t, T),
                    schedules.one_minus_alpha_bar(xd, t - 1, T))
    x_lo = jnp.sqrt(ab_lo) * x0_hat + jnp.sqrt(om_lo / om_hi) * (x - jnp.sqrt(ab_hi) * x0_hat)
    return x0_hat, x_lo

  rows = []
  for t in range(T, 0, -1):
    x0_hat, x = call(variables["reverse"], xd, x, jnp.int32(t))
    x0_hat_np = np.asarray(x0_hat, np.float64)
    rows.append({'call_at_step': t,
                 'rmse_from_vae_prior': float(np.sqrt(np.mean(np.square(
                     x0_hat_np - np.asarray(x0_scale, np.float64))))),
                 'hf_estimate': laplacian_energy(x0_hat_np) / hf_real})
  rows.append({'call_at_step': 0, 'rmse_from_vae_prior': 0.0,
               'hf_estimate': laplacian_energy(np.asarray(x0_scale, np.float64)) / hf_real,
               'note': 'the VAE prior decode itself'})
  return rows


def convergence(workdir: str) -> dict:
  path = os.path.join(workdir, 'metrics.jsonl')
  rows = [json.loads(l) for l in open(path) if l.strip()]
  rev = [(r['step'], r['loss']) for r in rows if r.get('stage') == 'reverse']
  if len(rev) < 10:
    return {}
  steps, loss = np.array(rev).T
  n = len(loss)
  tenth, fifth = max(1, n // 10), max(2, n // 5)
  last = loss[-fifth:]
  return {'loss_first_tenth': float(loss[:tenth].mean()), 'loss_last_tenth': float(
      loss[-tenth:].mean()), 'loss_last_fifth_first_half': float(last[:len(last) // 2].mean()),
          'loss_last_fifth_second_half': float(last[len(last) // 2:].mean()),
          'logged_points': int(n), 'last_step': int(steps[-1])}


def main(argv):
  del argv
  config = load_x0_workdir(FLAGS.workdir)
  _, variables = pixdiff_jax.load_sampler(FLAGS.workdir, batch_size=1)
  u8 = data.load_images(config, split='test')[:FLAGS.n]
  x0 = data.scale_images(u8, method='pixel_aware', eps=config.diffusion.eps)
  rng = jax.random.PRNGKey(FLAGS.seed)
  steps = per_step(config, variables, x0, jax.random.fold_in(rng, 1))
  traj = trajectory(config, variables, FLAGS.n, jax.random.fold_in(rng, 2), laplacian_energy(x0))
  conv = convergence(FLAGS.workdir)
  print(f'{"i":>3} {"mse_vae":>9} {"mse_head":>9} {"head|true":>9} {"gain":>7} '
        f'{"hf_vae":>7} {"hf_head":>7}')
  for r in steps:
    print(f'{r["step"]:>3} {r["mse_vae"]:9.5f} {r["mse_head"]:9.5f} '
          f'{r["mse_head_true_scale"]:9.5f} {r["gain"]:7.3f} {r["hf_vae"]:7.3f} '
          f'{r["hf_head"]:7.3f}')
  print('\ngeneration (consistent preset), per call:')
  print(f'{"t_k":>3} {"rmse_from_vae_prior":>20} {"hf_estimate":>12}')
  for r in traj:
    print(f'{r["call_at_step"]:>3} {r["rmse_from_vae_prior"]:20.4f} {r["hf_estimate"]:12.3f}')
  print('\nconvergence of the reverse stage:', json.dumps(conv))
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'diagnose_reverse.json')
  with open(out, 'w') as f:
    json.dump({'per_step': steps, 'trajectory': traj, 'convergence': conv, 'n': FLAGS.n}, f,
              indent=1)
  print('wrote', out)


if __name__ == '__main__':
  app.run(main)
