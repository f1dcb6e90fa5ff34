"""``--mode figures``: the paper's figures (and the Appendix B table) for a trained workdir.

Written to ``W/figures/`` (matplotlib PNGs) with a summary ``W/figures/figures.json``:

* ``fig01_snr.png``: per-pixel SNR ``abar x0^2 / (1 - abar)`` over ``t = i / T`` for several
  pixel values, pixel-aware (``abar = exp(-gamma t x0)``, the workdir's gamma) beside DDPM's
  linear 1000-step schedule at the same ``t`` (fig. 1).
* ``fig02_mean_variance.png``: empirical mean and variance over the pixels of ``x_i`` along one
  simulated forward chain of a test image, pixel-aware vs DDPM (fig. 2).
* ``fig05_abar.png``: real ``abar_i = x_delta^(i/T)`` vs the VAE's estimate
  ``G(x_i, i)^(i/T)`` for several ``i``, with SSIM (fig. 5; pixel-aware workdirs only).
* ``fig07_forward.png`` / ``fig07_reverse.png``: forward progressions of a test image (pixel-aware
  and DDPM at the same ``t``) and reverse progressions of the workdir's own model (figs. 7-8;
  pixel-aware: the consistent preset with K = T; DDPM: ancestral sampling). Workdirs with
  T >= 100 also get ``fig09_forward_start.png`` (first 10% of the forward process) and
  ``fig10_reverse_end.png`` (last 10% of the reverse process).
* ``fig11_samples.png``: sample grids of every setting evaluated by ``--mode eval`` (figs. 11-12;
  without an evaluation, 64 samples of the workdir's configured sampler).
* ``known_noise.md`` / ``.json``: Appendix B's known-noise experiment: Algorithm 1 with the
  exact heads of the forward chain that produced ``x_T`` and the true scale, reconstruction
  MSE against gamma for each head target (pixel-aware workdirs only).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from pixdiff_jax import config as config_lib, data, models
from pixdiff_jax.diffusion import parametrisation, samplers, schedules
from pixdiff_jax.errors import InputError
from pixdiff_jax.evaluation import report, settings
from pixdiff_jax.evaluation.known_noise import known_noise_markdown, known_noise_table
from pixdiff_jax.metrics.ssim import ssim

FIG_DIR = 'figures'
PIXEL_VALUES = (0.1, 0.25, 0.5, 0.75, 1.0)
DDPM_STEPS = 1000  # the reference DDPM: linear betas 1e-4..0.02 over 1000 steps


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _ddpm_abar() -> np.ndarray:
  return schedules.linear_alphas_cumprod(DDPM_STEPS, 1e-4, 0.02)


# ---------------------------------------------------------------------------- figures 1, 2
def fig_snr(path: str, gamma: float) -> None:
  plt = _plt()
  t = np.linspace(1e-3, 1.0, 400)
  ab_ddpm = _ddpm_abar()[np.clip(np.round(t * DDPM_STEPS).astype(int) - 1, 0, DDPM_STEPS - 1)]
  fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
  for k, v in enumerate(PIXEL_VALUES):
    color = f'C{k}'
    ax.semilogy(t, np.asarray(schedules.pixel_snr(np.full_like(t, v), t, gamma=gamma)),
                color=color, label=f'x0 = {v:g}')
    ax.semilogy(t, ab_ddpm * v * v / (1 - ab_ddpm), color=color, ls='--')
  ax.set_xlabel('t = i / T')
  ax.set_ylabel('per-pixel SNR')
  ax.set_title(f'pixel-aware (solid, gamma={gamma:g}) vs DDPM (dashed)', fontsize=9)
  ax.set_ylim(1e-4, 1e4)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def fig_mean_variance(path: str, image_unit: np.ndarray, gamma: float, eps: float,
                      seed: int) -> dict:
  """Mean and variance over the pixels of x_i along one forward chain of ``image_unit``."""
  plt = _plt()
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  x0_pa = eps + (1 - eps) * jnp.asarray(image_unit, jnp.float32)
  xs_pa, _ = schedules.forward_chain(k1, x0_pa, gamma=gamma, num_steps=DDPM_STEPS)
  x0_dd = 2.0 * jnp.asarray(image_unit, jnp.float32) - 1.0
  xs_dd = _ddpm_chain(k2, x0_dd)
  t = np.arange(DDPM_STEPS + 1) / DDPM_STEPS
  axes_of = lambda xs: (np.asarray(jnp.mean(xs, axis=tuple(range(1, xs.ndim)))),
                        np.asarray(jnp.var(xs, axis=tuple(range(1, xs.ndim)))))
  m_pa, v_pa = axes_of(xs_pa)
  m_dd, v_dd = axes_of(xs_dd)
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
  for ax, (pa, dd, target, what) in zip((a1, a2), ((m_pa, m_dd, 0.0, 'mean'),
                                                   (v_pa, v_dd, 1.0, 'variance'))):
    ax.plot(t, dd, color='C0', label='DDPM (linear betas)')
    ax.plot(t, pa, color='C3', label=f'pixel-aware (gamma={gamma:g})')
    ax.axhline(target, color='k', lw=0.6, ls=':')
    ax.set_xlabel('t = i / T')
    ax.set_title(f'{what} of x_i over the pixels', fontsize=9)
  a1.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  at = lambda arr, tt: float(arr[int(round(tt * DDPM_STEPS))])
  return {f'{m}_at_t{tt:g}': {'pixel_aware': at(pa, tt), 'ddpm': at(dd, tt)}
          for m, pa, dd in (('mean', m_pa, m_dd), ('variance', v_pa, v_dd))
          for tt in (0.25, 0.5, 1.0)}


def _ddpm_chain(rng, x0):
  ac = _ddpm_abar()
  betas = jnp.asarray(1.0 - ac / np.append(1.0, ac[:-1]), jnp.float32)
  e = jax.random.normal(rng, (DDPM_STEPS,) + x0.shape, x0.dtype)

  def step(x, be):
    b, e_n = be
    x = jnp.sqrt(1 - b) * x + jnp.sqrt(b) * e_n
    return x, x

  _, xs = jax.lax.scan(step, x0, (betas, e))
  return jnp.concatenate([x0[None], xs])


# ---------------------------------------------------------------------------- figure 5
def fig_abar(path: str, config, vae_params, images_unit: np.ndarray, seed: int) -> dict:
  """Real vs VAE-estimated abar_i of ``images_unit[0]`` (shown) and mean SSIM over all."""
  plt = _plt()
  d = config.diffusion
  T, gamma = d.num_steps, d.gamma
  vae = models.build_vae(config)
  x0 = d.eps + (1 - d.eps) * jnp.asarray(images_unit, jnp.float32)
  x_delta = schedules.image_scale(x0, gamma)
  steps = sorted({max(1, int(round(f * T))) for f in (0.1, 0.25, 0.5, 0.75, 1.0)})
  est = jax.jit(lambda x, i: models.vae_estimate_scale(vae, vae_params, x, i))
  real_rows, est_rows, ssims = [], [], {}
  for i in steps:
    noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), i), x0.shape)
    x_i = schedules.q_sample(x0, i, noise, gamma=gamma, num_steps=T)
    xd_hat = est(x_i, jnp.full((x0.shape[0],), i, jnp.int32))
    ab_real = np.asarray(schedules.alpha_bar(x_delta, i, T))
    ab_est = np.asarray(schedules.alpha_bar(xd_hat, i, T))
    ssims[i] = float(np.mean([ssim(ab_real[n, ..., 0], ab_est[n, ..., 0])
                              for n in range(len(ab_real))]))
    real_rows.append(ab_real[0, ..., 0])
    est_rows.append(ab_est[0, ..., 0])
  fig, axes = plt.subplots(2, len(steps), figsize=(1.5 * len(steps) + 0.8, 3.4), dpi=100,
                           squeeze=False)
  for k, i in enumerate(steps):
    for r, (img, what) in enumerate(((real_rows[k], 'real'), (est_rows[k], 'VAE'))):
      ax = axes[r, k]
      ax.imshow(img, cmap='gray', vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(f'i={i}\nSSIM {ssims[i]:.2f}', fontsize=8)
      if k == 0:
        ax.set_ylabel(f'{what} abar_i', fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return {'steps': steps, 'mean_ssim_by_step': {str(i): s for i, s in ssims.items()},
          'num_images': int(len(images_unit))}


# ---------------------------------------------------------------------------- figures 7-10
def _frames_figure(path: str, rows: list[tuple[str, list[np.ndarray], list[str]]],
                   vranges: list[tuple[float, float]]) -> None:
  plt = _plt()
  ncol = max(len(r[1]) for r in rows)
  fig, axes = plt.subplots(len(rows), ncol, figsize=(0.95 * ncol + 1.2, 1.15 * len(rows) + 0.3),
                           dpi=100, squeeze=False)
  for r, ((label, frames, titles), (lo, hi)) in enumerate(zip(rows, vranges)):
    for c in range(ncol):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      if c >= len(frames):
        ax.axis('off')
        continue
      ax.imshow(np.asarray(frames[c])[..., 0], cmap='gray', vmin=lo, vmax=hi)
      ax.set_title(titles[c], fontsize=6)
      if c == 0:
        ax.set_ylabel(label, fontsize=6)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def forward_frames(image_unit: np.ndarray, *, gamma: float, eps: float, ts: np.ndarray,
                   seed: int):
  """Pixel-aware and DDPM forward chains of one image at the times ``ts`` (fractions of T)."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  x0 = jnp.asarray(image_unit, jnp.float32)
  xs_pa, _ = schedules.forward_chain(k1, eps + (1 - eps) * x0, gamma=gamma,
                                     num_steps=DDPM_STEPS)
  xs_dd = _ddpm_chain(k2, 2 * x0 - 1)
  idx = np.round(np.asarray(ts) * DDPM_STEPS).astype(int)
  return [np.asarray(xs_pa[i]) for i in idx], [np.asarray(xs_dd[i]) for i in idx]


def reverse_trajectory(workdir: str, config, *, num_images: int, seed: int
                       ) -> tuple[list[int], list[np.ndarray]]:
  """States ``x_j`` seen by every network call of the workdir's model, then ``x0``.

  Pixel-aware: the consistent preset with K = T (one call per step); DDPM: ancestral sampling.
  Returns the steps (descending, then 0) and float32 ``[num_images, H, W, C]`` states in model
  space.
  """
  from pixdiff_jax.storage import checkpointing  # pylint: disable=g-import-not-at-top
  seen = {}

  def record(x, j):
    seen[int(np.round(float(j)))] = np.asarray(x)

  d = config.diffusion
  shape = (num_images, config.data.image_size, config.data.image_size, config.data.num_channels)
  key = jax.random.PRNGKey(seed)
  use_ema = bool(config.sampling.use_ema)
  net = models.build_reverse_model(config)
  if config.method == 'ddpm':
    params = checkpointing.load_stage_params(config, workdir, 'ddpm', use_ema=use_ema)

    def eps_fn(x, n):
      jax.debug.callback(record, x, n)
      return net.apply({'params': params}, x, jnp.broadcast_to(n, (shape[0],)), train=False)

    x0 = samplers.ddpm_sample(eps_fn, key, shape, alphas_cumprod=schedules.ddpm_alphas_cumprod(
        config), clip_denoised=bool(config.sampling.clip_denoised))
  else:
    vae = models.build_vae(config)
    vae_params = checkpointing.load_stage_params(config, workdir, 'vae', use_ema=use_ema)
    params = checkpointing.load_stage_params(config, workdir, 'reverse', use_ema=use_ema)
    k_prior, k_xt = jax.random.split(key)
    T = d.num_steps
    x_delta_hat = models.vae_decode_prior(vae, vae_params, k_prior, shape[0], num_steps=T)
    ab = schedules.alpha_bar(x_delta_hat, T, T)
    x_T = (jnp.sqrt(ab) * schedules.x0_from_scale(x_delta_hat, d.gamma) + jnp.sqrt(
        schedules.one_minus_alpha_bar(x_delta_hat, T, T)) * jax.random.normal(k_xt, shape))

    def model_fn(x_j, xd, j):
      jax.debug.callback(record, x_j, j)
      steps = jnp.broadcast_to(jnp.asarray(j, jnp.int32), (shape[0],))
      return parametrisation.heads_first(
          net.apply({'params': params}, x_j, xd, steps, train=False))

    x0 = samplers.block_sequential_reverse(
        model_fn, x_T, x_delta_hat, None, num_steps=T, network_calls=T, eta=0.0,
        clip_denoised=True, eps=d.eps, update='x0_jump', target=d.target)
  x0 = np.asarray(jax.block_until_ready(x0))
  steps = sorted(seen, reverse=True)
  return steps + [0], [seen[s] for s in steps] + [x0]


# ---------------------------------------------------------------------------- figure 11
def fig_samples(path: str, workdir: str, config, seed: int) -> list[str]:
  plt = _plt()
  from pixdiff_jax.utils import image_grid  # pylint: disable=g-import-not-at-top
  eval_dir = os.path.join(workdir, settings.EVAL_DIR)
  scores = {r['setting']: r['fd_efflite0'] for r in report.read_json(
      os.path.join(eval_dir, 'results.json'), {}).get('settings', [])}
  names = [s.name for s in settings.settings_for(config, config_lib.default_eval_config())]
  names += sorted(n[:-4] for n in os.listdir(eval_dir) if n.endswith('.npz')
                  and n[:-4] not in names) if os.path.isdir(eval_dir) else []
  panels = []
  for name in names:  # every setting sampled by --mode eval, in the default order
    meta = report.read_json(os.path.join(eval_dir, f'{name}.json'), None)
    npz = os.path.join(eval_dir, f'{name}.npz')
    if meta is None or not os.path.exists(npz):
      continue
    title = name + (f': FD_efflite0 {scores[name]:.1f}' if name in scores else '')
    with np.load(npz) as f:
      panels.append((title, f['images'][:36]))
  if not panels:
    from pixdiff_jax import sampling  # pylint: disable=g-import-not-at-top
    fn, variables = sampling.load_sampler(workdir, batch_size=36)
    images = data.to_uint8(np.asarray(jax.jit(fn)(variables, jax.random.PRNGKey(seed))))
    panels.append(('configured sampler (no --mode eval yet)', images))
  ncol = min(4, len(panels))
  nrow = -(-len(panels) // ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.8 * nrow), dpi=100, squeeze=False)
  for k, ax in enumerate(axes.flat):
    ax.axis('off')
    if k < len(panels):
      grid = image_grid.make_grid(panels[k][1], ncol=6, pad=1)
      ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap='gray', vmin=0, vmax=255)
      ax.set_title(panels[k][0], fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return [p[0] for p in panels]


# ---------------------------------------------------------------------------- all
def make_figures(workdir: str, ev, *, num_images: int = 8) -> dict:
  """Writes every figure for ``workdir`` into ``W/figures/``; returns the summary dict."""
  from pixdiff_jax.storage import checkpointing  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(workdir)
  out = os.path.join(workdir, FIG_DIR)
  os.makedirs(out, exist_ok=True)
  seed = int(ev.seed)
  d = config.diffusion
  gamma = float(d.gamma)
  eps = float(d.eps)
  test = data.load_images(config, split=ev.reference_split)
  if len(test) < num_images:
    raise InputError(f'figures need {num_images} images of split {ev.reference_split!r}')
  pick = np.random.default_rng(seed).choice(len(test), num_images, replace=False)
  images_unit = test[np.sort(pick)].astype(np.float32) / 255.0
  summary = {'workdir': os.path.abspath(workdir), 'files': {}, 'skipped': {}}

  def path(name):
    summary['files'][name] = os.path.join(out, name)
    return summary['files'][name]

  fig_snr(path('fig01_snr.png'), gamma)
  summary['mean_variance'] = fig_mean_variance(path('fig02_mean_variance.png'), images_unit[0],
                                               gamma, eps, seed)
  if config.method == 'pixel_aware':
    vae_params = checkpointing.load_stage_params(config, workdir, 'vae',
                                         use_ema=bool(config.sampling.use_ema))
    summary['abar_ssim'] = fig_abar(path('fig05_abar.png'), config, vae_params, images_unit,
                                    seed)
  else:
    summary['skipped']['fig05_abar.png'] = 'no scale VAE in a DDPM workdir'

  T = d.num_steps
  ts = np.linspace(0, 1, 11)
  pa, dd = forward_frames(images_unit[0], gamma=gamma, eps=eps, ts=ts, seed=seed)
  titles = [f't={t:.1f}' for t in ts]
  _frames_figure(path('fig07_forward.png'), [
      (f'pixel-aware\ngamma={gamma:g}', pa, titles), ('DDPM\nlinear', dd, titles)],
      [(-1, 1), (-1, 1)])
  steps, states = reverse_trajectory(workdir, config, num_images=4, seed=seed)
  vr = (-1, 1)  # one grey scale for both methods: noise looks alike, negative values show
  which = 'DDPM ancestral' if config.method == 'ddpm' else 'x0_jump K=T'
  pick_idx = np.unique(np.round(np.linspace(0, len(steps) - 1, 11)).astype(int))
  _frames_figure(path('fig07_reverse.png'), [
      (f'{which}\nsample {n}', [states[k][n] for k in pick_idx],
       [f'i={steps[k]}' for k in pick_idx]) for n in range(4)], [vr] * 4)
  if T >= 100:
    ts_start = np.linspace(0, 0.1, 11)
    pa, dd = forward_frames(images_unit[0], gamma=gamma, eps=eps, ts=ts_start, seed=seed)
    titles = [f't={t:.2f}' for t in ts_start]
    _frames_figure(path('fig09_forward_start.png'), [
        (f'pixel-aware\ngamma={gamma:g}', pa, titles), ('DDPM\nlinear', dd, titles)],
        [(-1, 1), (-1, 1)])
    last = [k for k, s in enumerate(steps) if s <= T // 10]
    pick_idx = [last[k] for k in np.unique(np.round(np.linspace(0, len(last) - 1, 11)).astype(
        int))]
    _frames_figure(path('fig10_reverse_end.png'), [
        (f'{which}\nsample {n}', [states[k][n] for k in pick_idx],
         [f'i={steps[k]}' for k in pick_idx]) for n in range(4)], [vr] * 4)
  summary['sample_panels'] = fig_samples(path('fig11_samples.png'), workdir, config, seed)

  if config.method == 'pixel_aware':
    rows = known_noise_table(images_unit, num_steps=T, eps=eps, seed=seed)
    summary['known_noise'] = rows
    with open(path('known_noise.md'), 'w', encoding='utf-8') as f:
      f.write(known_noise_markdown(rows, num_steps=T, num_images=num_images))
  else:
    summary['skipped']['known_noise.md'] = 'Appendix B is about the pixel-aware recursion'
  with open(os.path.join(out, 'figures.json'), 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2)
  return summary
