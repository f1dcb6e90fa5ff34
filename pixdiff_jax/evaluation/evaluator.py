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

``compare(workdirs, out_prefix)`` puts the rows of several evaluated workdirs into one table in
the shape of the paper's Table 1 (method, sampler, params, network evals, s/image, FD, FID).

Setting names (``parse_setting``):

* pixel-aware: ``paper`` (the preset: K=1, eta=1, no clip, x_T ~ N(0, I), recursion);
  ``consistent`` (the preset with the workdir's K); ``x0_jump_K<k>`` (the consistent preset with
  K = k network calls; ``x0_jump_KT``: K = T; a suffix ``_eta<e>`` sets the fresh noise, e.g.
  ``x0_jump_KT_eta1`` is ancestral sampling); ``vae_prior`` (the VAE's scale prior decoded to
  an image, no reverse model).
* DDPM baseline: ``ddpm`` (ancestral, T steps); ``ddim_<S>`` (eta = 0); ``dpm_solver_<S>``
  (DPM-Solver++(2M)); all with the workdir's ``sampling.clip_denoised``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import time
from typing import Any, Callable

import ml_collections
import numpy as np

__all__ = ['DEFAULT_SETTINGS', 'RESULT_COLUMNS', 'EVAL_DIR', 'EvalError', 'default_eval_config',
           'eval_config_for', 'Setting', 'parse_setting', 'settings_for', 'sample_counts',
           'Scorer', 'check_inception_weights', 'evaluate', 'method_label', 'results_markdown',
           'compare']

DEFAULT_SETTINGS = {
    'pixel_aware': ('paper', 'consistent', 'x0_jump_K1', 'x0_jump_K2', 'x0_jump_K5',
                    'x0_jump_KT', 'vae_prior'),
    'ddpm': ('ddpm', 'ddim_10', 'ddim_20', 'ddim_50', 'ddim_100', 'dpm_solver_10',
             'dpm_solver_20'),
}
RESULT_COLUMNS = ('setting', 'sampler', 'num_samples', 'params', 'network_evals',
                  'seconds_per_image', 'fd_efflite0', 'fd_efflite0_floor', 'fid', 'fid_floor')
EVAL_DIR = 'eval'


class EvalError(ValueError):
  """A user mistake or an unusable workdir: printed by main.py as one ``error:`` line."""


# ---------------------------------------------------------------------------- eval settings
def default_eval_config() -> ml_collections.ConfigDict:
  """The ``eval`` section of ``configs/default.py``."""
  from pixdiff_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  path = os.path.join(root, 'configs', 'default.py')
  return config_lib.load_config_module(path).get_default_config().eval


def eval_config_for(stored: ml_collections.ConfigDict,
                    given: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """The eval settings: the command line's config if given, else the workdir's, else defaults.

  Workdirs trained before ``config.eval`` existed have no such section; every missing field is
  taken from ``configs/default.py``.
  """
  ev = default_eval_config()
  source = given if given is not None else stored
  if 'eval' in source:
    ev.update(source.eval)
  return ev


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
  raise EvalError(f'unknown eval setting {name!r} for method={config.method!r} '
                  f'(config.eval.samplers); known: {known}')


def settings_for(config: ml_collections.ConfigDict, ev: ml_collections.ConfigDict
                 ) -> list[Setting]:
  names = [n for n in str(ev.samplers).split(',') if n.strip()] or list(
      DEFAULT_SETTINGS[config.method])
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
  from pixdiff_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
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


def _generate(fn, variables, *, n: int, batch: int, seed: int, desc: str):
  """Images uint8 [n, H, W, C], per-batch seconds (after compilation) and compile seconds."""
  import jax  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from pixdiff_jax import data  # pylint: disable=g-import-not-at-top
  key = jax.random.PRNGKey(seed)
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(variables, key).compile()
  compile_s = time.perf_counter() - t0
  chunks, times = [], []
  for b in tqdm(range(-(-n // batch)), desc=desc, disable=jax.process_index() != 0):
    t0 = time.perf_counter()
    images = jax.block_until_ready(compiled(variables, jax.random.fold_in(key, b)))
    times.append(time.perf_counter() - t0)
    images = np.asarray(images)
    if not np.all(np.isfinite(images)):
      raise EvalError(f'{desc}: the sampler produced {int(np.sum(~np.isfinite(images)))} '
                      'non-finite pixel values')
    chunks.append(data.to_uint8(images))
  return np.concatenate(chunks)[:n], times, compile_s


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
  from pixdiff_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(workdir)
  for stage in checkpointing.stages_for(config):
    if not os.path.isdir(os.path.join(workdir, 'checkpoints', stage)) or not os.listdir(
        os.path.join(workdir, 'checkpoints', stage)):
      raise EvalError(f'{workdir} has no checkpoint of stage {stage!r}: train it first '
                      f'(python main.py --config ... --workdir {workdir})')
  settings = settings_for(config, ev)
  counts = sample_counts(ev, [s.name for s in settings])
  check_inception_weights(ev)
  if int(ev.timing_batches) < 1 or int(ev.batch_size) < 1:
    raise EvalError('config.eval.batch_size and config.eval.timing_batches must be >= 1')
  out_dir = os.path.join(workdir, EVAL_DIR)
  os.makedirs(out_dir, exist_ok=True)
  results_path = os.path.join(out_dir, 'results.json')
  previous = {r['setting']: r for r in _read_json(results_path, {}).get('settings', [])}
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
  meta = _read_json(meta_path, None)
  if meta is not None and meta.get('key') == key and os.path.exists(npz):
    log(f'{setting.name}: reusing the samples in {npz}')
    return meta
  fn, variables, evals, params = _sampler(workdir, config, setting, batch)
  images, times, compile_s = _generate(fn, variables, n=n, batch=batch, seed=int(ev.seed),
                                       desc=setting.name)
  np.savez_compressed(npz, images=images)
  image_grid.save_grid(os.path.join(out_dir, f'{setting.name}.png'), images[:int(ev.grid_size)])
  meta = {'sampler': setting.label, 'num_samples': n, 'params': int(params),
          'network_evals': evals, 'vae_evals': 0 if config.method == 'ddpm' else 1,
          'seconds_per_image': float(np.median(times)) / batch, 'timed_batches': len(times),
          'batch_size': batch, 'batch_seconds': times, 'compile_seconds': compile_s,
          'machine': _machine(), 'npz': os.path.basename(npz), 'png': f'{setting.name}.png',
          'key': key}
  _write_json(meta_path, meta)
  return meta


def method_label(config) -> str:
  d = config.diffusion
  if config.method == 'ddpm':
    return f'DDPM (one-head U-Net, T={d.num_steps}, {d.schedule} betas)'
  return f'pixel-aware (T={d.num_steps} heads, gamma={d.gamma:g}, target={d.target})'


def _write_results(out_dir, config, workdir, rows) -> dict:
  results = {'workdir': os.path.abspath(workdir), 'method': config.method,
             'method_label': method_label(config), 'machine': _machine(),
             'written': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
             'settings': rows}
  _write_json(os.path.join(out_dir, 'results.json'), results)
  with open(os.path.join(out_dir, 'results.md'), 'w', encoding='utf-8') as f:
    f.write(results_markdown(results))
  return results


# ---------------------------------------------------------------------------- tables
def _fmt(value, kind: str) -> str:
  if value is None:
    return '-'
  if kind == 'int':
    return f'{int(value):,}'
  value = float(value)
  if not math.isfinite(value):  # never a NaN in a table
    raise EvalError(f'a non-finite number ({value}) reached a results table')
  return f'{value:.3g}' if kind == 'sec' else f'{value:.2f}'


def _row_cells(r: dict) -> list[str]:
  return [_fmt(r['num_samples'], 'int'), _fmt(r['params'], 'int'),
          _fmt(r['network_evals'], 'int'), _fmt(r['seconds_per_image'], 'sec'),
          _fmt(r['fd_efflite0'], 'fd'), _fmt(r['fd_efflite0_floor'], 'fd'),
          _fmt(r.get('fid'), 'fd'), _fmt(r.get('fid_floor'), 'fd')]


_HEAD = ['n', 'params', 'network evals', 's/image', 'FD_efflite0', 'floor (real, same n)',
         'FID', 'FID floor']


def results_markdown(results: dict) -> str:
  m = results['machine']
  lines = [f"# Evaluation of {results['workdir']}", '',
           f"{results['method_label']}. Reference: all images of the "
           f"{_reference_text(results)}; floor: the same distance for n random training "
           f"images. Seconds per image: median over timed batches after compilation on "
           f"{m['platform']} ({m['device_kind']}, {m['cpu_count']} CPUs). Network evals: "
           'calls of the reverse model (pixel-aware rows also run the VAE once). FID '
           "'-': no Inception weights given (--config.eval.inception_weights).", '',
           '| setting | sampler | ' + ' | '.join(_HEAD) + ' |',
           '|---|---|' + '---:|' * len(_HEAD)]
  for r in results['settings']:
    lines.append(f"| {r['setting']} | {r['sampler']} | " + ' | '.join(_row_cells(r)) + ' |')
  return '\n'.join(lines) + '\n'


def _reference_text(results: dict) -> str:
  rows = results['settings']
  if not rows:
    return 'reference split'
  ref = rows[0]['key']['reference']
  text = f"{ref['dataset']} {ref['split']} split"
  if ref['max_examples']:
    text += f" (first {ref['max_examples']} only: test setting)"
  return text


def compare(workdirs: list[str], out_prefix: str) -> dict:
  """One Table-1-shaped table over evaluated workdirs: ``<out_prefix>.md`` and ``.json``."""
  if not workdirs:
    raise EvalError('--workdirs is empty: give evaluated workdirs, e.g. --workdirs W1,W2')
  tables = []
  for w in workdirs:
    path = os.path.join(w, EVAL_DIR, 'results.json')
    if not os.path.exists(path):
      raise EvalError(f'{path} not found: run python main.py --mode eval --workdir {w} first')
    tables.append(_read_json(path, None))
  rows = []
  for t in tables:
    for r in t['settings']:
      rows.append({'method': t['method_label'], 'workdir': t['workdir'], **{
          k: r.get(k) for k in RESULT_COLUMNS}})
  out = {'rows': rows, 'machines': [t['machine'] for t in tables],
         'written': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}
  lines = ['| method | sampler | ' + ' | '.join(_HEAD) + ' |',
           '|---|---|' + '---:|' * len(_HEAD)]
  for r in rows:
    lines.append(f"| {r['method']} | {r['sampler']} | " + ' | '.join(_row_cells(r)) + ' |')
  os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
  _write_json(out_prefix + '.json', out)
  with open(out_prefix + '.md', 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  out['markdown'] = out_prefix + '.md'
  return out


# ---------------------------------------------------------------------------- files
def _read_json(path, default):
  if path is None or not os.path.exists(path):
    return default
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _write_json(path: str, obj: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, allow_nan=False)
  os.replace(tmp, path)
