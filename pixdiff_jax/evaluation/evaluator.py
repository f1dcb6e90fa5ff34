"""``--mode eval`` and ``--mode compare``: sample quality, cost and speed of sampler settings.

``evaluate(workdir, eval_config)`` runs every sampler setting of ``eval_config.samplers`` on a
trained workdir: it generates ``num_samples`` images in batches (progress bar), times the batches
after compilation, scores the images with the Frechet distance in EfficientNet-Lite0 features
(``FD_efflite0``, ``pixdiff_jax.metrics``) and, when Inception weights are given, the FID,
against ALL images of the reference split, next to the real-vs-real floor: the same distance for
as many random images of the training split (cached). Files written::

    W/eval/results.json        {'settings': [one object per setting], ...}
    W/eval/results.md          the same as a Markdown table
    W/eval/<setting>.npz       uint8 images [N, H, W, C] under the key 'images'
    W/eval/<setting>.png       a grid of the first eval.grid_size images
    W/eval/<setting>.json      what sampling measured (reused when only the scoring changes)

A rerun reuses every setting whose stored result was made with the same settings, sample count,
seed, reference and feature weights (an interrupted run continues where it stopped).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from typing import Callable

import ml_collections
import numpy as np

from pixdiff_jax.errors import writing
from pixdiff_jax.evaluation.report import method_label, read_json, results_markdown, write_json
from pixdiff_jax.evaluation.settings import (EVAL_DIR, EvalError, Setting, sample_counts,
                                            settings_for)

__all__ = ['Scorer', 'check_inception_weights', 'evaluate']


# ---------------------------------------------------------------------------- features
class Scorer:
  """Frechet distances of uint8 image sets against the reference split, and their floors.

  Args:
    config: the workdir's config (its ``data`` section names the dataset).
    ev: the eval settings.
    extractors: ``{'fd_efflite0': extractor[, 'fid': extractor]}`` (``pixdiff_jax.metrics``
      feature extractors); ``None``: EfficientNet-Lite0, plus Inception when
      ``ev.inception_weights`` is set.
  The reference statistics (all images of ``ev.reference_split``) and the floors (``n`` random
  images of ``ev.floor_split``) are cached by ``pixdiff_jax.metrics``.
  """

  def __init__(self, config, ev, extractors=None):
    check_inception_weights(ev)
    from pixdiff_jax import metrics  # pylint: disable=g-import-not-at-top
    self.metrics = metrics
    self.config, self.ev = config, ev
    if extractors is None:
      extractors = {'fd_efflite0': metrics.get_feature_extractor(
          'efflite0', weights_path=ev.efflite0_weights or None)}
      if ev.inception_weights:
        extractors['fid'] = metrics.get_feature_extractor(
            'inception', weights_path=ev.inception_weights)
    self.extractors = extractors
    self._reference = {}
    d = self.config.data
    self._data = dict(dataset=str(d.dataset), path=str(d.get('path', '')),
                      max_examples=int(ev.reference_max_examples))
    if self._data['dataset'] not in self.metrics.REFERENCE_DATASETS:  # e.g. cifar10, celeba
      self._data['data_config'] = d

  def describe(self) -> dict:
    return {k: {'name': ex.name, 'dim': int(ex.dim), 'weights_hash': ex.weights_hash}
            for k, ex in self.extractors.items()}

  def reference_info(self) -> dict:
    return {'dataset': self._data['dataset'], 'split': str(self.ev.reference_split),
            'max_examples': self._data['max_examples']}  # (data_config: the workdir's own)

  def reference(self, key):
    """(mu, sigma) of every image of the reference split for extractor ``key``."""
    if key not in self._reference:
      mu, sigma, _ = self.metrics.reference_stats(
          self.extractors[key], split=str(self.ev.reference_split), **self._data)
      self._reference[key] = (mu, sigma)
    return self._reference[key]

  def score(self, images) -> dict[str, float]:
    """``{key: Frechet distance}`` of uint8 ``[N, H, W, C]`` images against the reference."""
    crop = self.metrics.sample_crop(self._data['dataset'], images)
    out = {}
    for key, ex in self.extractors.items():
      feats = np.asarray(ex(images, crop_to=crop), np.float64)
      if not np.all(np.isfinite(feats)):
        raise EvalError(f'{int(np.sum(~np.isfinite(feats)))} non-finite {key} features')
      mu, sigma = self.metrics.gaussian_stats(feats)
      out[key] = _finite(self.metrics.frechet_distance(mu, sigma, *self.reference(key)), key)
    return out

  def floor(self, n: int) -> dict[str, float]:
    """The same distances for ``n`` random images of ``eval.floor_split`` (real vs real)."""
    return {key: _finite(self.metrics.real_floor(
        ex, n, split=str(self.ev.reference_split), train_split=str(self.ev.floor_split),
        seed=int(self.ev.seed), **self._data), f'{key} floor')
            for key, ex in self.extractors.items()}


def check_inception_weights(ev) -> None:
  """A given but missing Inception file is an error before any sampling starts."""
  if ev.inception_weights and not os.path.isfile(ev.inception_weights):
    from pixdiff_jax.metrics import inception  # pylint: disable=g-import-not-at-top
    raise EvalError(inception.missing_weights_message(ev.inception_weights))


def _finite(value, what: str) -> float:
  value = float(value)
  if not math.isfinite(value):
    raise EvalError(f'{what} is {value}: the features or their covariance are degenerate')
  return value


# ---------------------------------------------------------------------------- sampling
def _sampler(workdir: str, config, setting: Setting, batch: int):
  """(jittable fn(variables, key) -> float images in [0, 1], variables, network evals, params)."""
  from pixdiff_jax import models, sampling  # pylint: disable=g-import-not-at-top
  from pixdiff_jax.storage import checkpointing  # pylint: disable=g-import-not-at-top
  use_ema = bool(config.sampling.use_ema)
  counts = models.count_params(config)
  if setting.overrides is None:
    vae_params = checkpointing.load_stage_params(config, workdir, 'vae', use_ema=use_ema)
    prior_fn = sampling.get_scale_prior_fn(config, models.build_vae(config), batch_size=batch)
    return (lambda variables, key: prior_fn(variables['vae'], key)), {'vae': vae_params}, 0, \
        counts['vae']
  fn, variables = sampling.load_sampler(workdir, batch_size=batch, use_ema=use_ema,
                                        **setting.overrides)
  return fn, variables, int(fn.network_evals), counts['total']


def _generate(fn, variables, config, *, n: int, batch: int, seed: int, desc: str):
  """Images uint8 [n, H, W, C], per-batch seconds (after compilation) and compile seconds, from
  the generator that sample mode uses too (batch b: key fold_in(PRNGKey(seed), b))."""
  from pixdiff_jax.sampling import generate  # pylint: disable=g-import-not-at-top

  def finite(images):
    images = np.asarray(images)
    if not np.all(np.isfinite(images)):
      raise EvalError(f'{desc}: the sampler produced {int(np.sum(~np.isfinite(images)))} '
                      'non-finite pixel values')
    return images

  d = config.data
  gen = generate.Generator(fn, variables, seed=seed, unpack=finite,
                           image_shape=(batch, d.image_size, d.image_size, d.num_channels))
  images = generate.generate(gen, n, desc=desc)
  return images, gen.batch_seconds, gen.compile_seconds


def _machine() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return {'platform': dev.platform, 'device_kind': dev.device_kind,
          'devices': jax.device_count(), 'cpu_count': os.cpu_count(),
          'processor': platform.processor() or platform.machine()}


# ---------------------------------------------------------------------------- eval
def evaluate(workdir: str, ev: ml_collections.ConfigDict, *, extractors=None,
             log: Callable[[str], None] = print, samples_only: bool = False) -> dict:
  """Runs ``--mode eval`` on ``workdir`` (see the module docstring); returns results.json.

  ``samples_only``: generate (or reuse) every setting's samples and stop before scoring.
  """
  from pixdiff_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from pixdiff_jax.storage import checkpointing  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(workdir)
  has_stage = lambda stage: os.path.isdir(os.path.join(workdir, 'checkpoints', stage)) and any(
      n.isdigit() for n in os.listdir(os.path.join(workdir, 'checkpoints', stage)))
  for stage in checkpointing.stages_for(config):
    if stage != 'distill' and not has_stage(stage):
      raise EvalError(f'{workdir} has no checkpoint of stage {stage!r}: train it first '
                      f'(python main.py --config ... --workdir {workdir})')
  settings = settings_for(config, ev, distilled=has_stage('distill'))
  counts = sample_counts(ev, [s.name for s in settings])
  check_inception_weights(ev)
  if int(ev.timing_batches) < 1 or int(ev.batch_size) < 1:
    raise EvalError('config.eval.batch_size and config.eval.timing_batches must be >= 1')
  out_dir = os.path.join(workdir, EVAL_DIR)
  os.makedirs(out_dir, exist_ok=True)
  results_path = os.path.join(out_dir, 'results.json')
  previous = {r['setting']: r for r in read_json(results_path, {}).get('settings', [])}
  scorer = None if samples_only else Scorer(config, ev, extractors)
  rows, sampled_by = [], {}
  for setting in settings:
    n = counts[setting.name]
    # Two names for one sampler (e.g. 'consistent' with K = T and 'x0_jump_KT'): sample once.
    same = json.dumps([setting.overrides, n], sort_keys=True)
    if same in sampled_by:
      sampled = dict(sampled_by[same])
      sampled['same_as'] = sampled.pop('setting_name')
      sampled['key'] = {**sampled['key'], 'label': setting.label}
      sampled['sampler'] = f"{setting.label} (the samples of {sampled['same_as']})"
    else:
      sampled = _sample_setting(workdir, config, ev, setting, n, out_dir, log)
      sampled_by[same] = {**sampled, 'setting_name': setting.name}
    if scorer is None:
      continue
    key = {**sampled['key'], 'reference': scorer.reference_info(),
           'features': scorer.describe(), 'floor_split': str(ev.floor_split)}
    old = previous.get(setting.name)
    if old is not None and old.get('key') == key:
      log(f'{setting.name}: reusing the finished result in {results_path}')
      rows.append(old)
      continue
    with np.load(os.path.join(out_dir, sampled['npz'])) as f:
      images = f['images']
    scores = scorer.score(images)
    floor = scorer.floor(n)
    row = {'setting': setting.name, **{k: v for k, v in sampled.items() if k != 'key'},
           'fd_efflite0': scores['fd_efflite0'], 'fd_efflite0_floor': floor['fd_efflite0'],
           'fid': scores.get('fid'), 'fid_floor': floor.get('fid'), 'key': key}
    log(f"{setting.name}: n={n} FD_efflite0={row['fd_efflite0']:.2f} "
        f"(floor {row['fd_efflite0_floor']:.2f}) {row['seconds_per_image']:.2e} s/image")
    rows.append(row)
    # Written after every setting: an interrupted run keeps what it finished.
    done = {x['setting'] for x in rows}
    _write_results(out_dir, config, workdir, rows + [
        r for r in previous.values() if r['setting'] not in done
        and r['setting'] in {s.name for s in settings}])
  if scorer is None:
    return {'settings': []}
  return _write_results(out_dir, config, workdir, rows)


def _sample_setting(workdir, config, ev, setting: Setting, n: int, out_dir: str, log) -> dict:
  """Generates (or reuses) one setting's samples: ``<name>.npz/.png`` and ``<name>.json``.

  The JSON holds what sampling measured (network evals, params, seconds per image); it is
  reused when the sampler settings, count and seed are unchanged, so scoring can be redone
  (e.g. with FID weights added) without sampling again.
  """
  from pixdiff_jax.utils import image_grid  # pylint: disable=g-import-not-at-top
  # Small enough for at least eval.timing_batches batches (when n allows).
  batch = max(1, min(int(ev.batch_size), n // int(ev.timing_batches)))
  key = {'settings': setting.overrides, 'label': setting.label, 'num_samples': n,
         'seed': int(ev.seed)}
  npz = os.path.join(out_dir, f'{setting.name}.npz')
  meta_path = os.path.join(out_dir, f'{setting.name}.json')
  meta = read_json(meta_path, None)
  if meta is not None and meta.get('key') == key and os.path.exists(npz):
    log(f'{setting.name}: reusing the samples in {npz}')
    return meta
  fn, variables, evals, params = _sampler(workdir, config, setting, batch)
  images, times, compile_s = _generate(fn, variables, config, n=n, batch=batch,
                                       seed=int(ev.seed), desc=setting.name)
  with writing(npz, 'samples'):
    np.savez_compressed(npz, images=images)
  image_grid.save_grid(os.path.join(out_dir, f'{setting.name}.png'), images[:int(ev.grid_size)])
  meta = {'sampler': setting.label, 'num_samples': n, 'params': int(params),
          'network_evals': evals, 'vae_evals': 0 if config.method == 'ddpm' else 1,
          'seconds_per_image': float(np.median(times)) / batch, 'timed_batches': len(times),
          'batch_size': batch, 'batch_seconds': times, 'compile_seconds': compile_s,
          'machine': _machine(), 'npz': os.path.basename(npz), 'png': f'{setting.name}.png',
          'key': key}
  write_json(meta_path, meta)
  return meta


def _write_results(out_dir, config, workdir, rows) -> dict:
  results = {'workdir': os.path.abspath(workdir), 'method': config.method,
             'method_label': method_label(config), 'machine': _machine(),
             'written': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
             'settings': rows}
  write_json(os.path.join(out_dir, 'results.json'), results)
  with open(os.path.join(out_dir, 'results.md'), 'w', encoding='utf-8') as f:
    f.write(results_markdown(results))
  return results


