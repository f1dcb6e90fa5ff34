"""The distill stage (docs/design.md section 7): the teacher's pairs, their cache in the workdir,
the teacher's identity, and the stage itself.

* :func:`get_teacher_fn` -> a pure, jittable ``teacher(variables, key) -> pairs`` for a batch:
  pixel-aware, ``x_T`` drawn as generation draws it (``sample_lib.draw_start``: VAE prior ->
  scale -> ``x_T``), then the deterministic K = T ``consistent`` sampler (``x0_jump``, eta 0,
  clip) with its trajectory; DDPM, ``x_T ~ N(0, I)`` drawn as its samplers draw it, then
  DPM-Solver++(2M) with ``distill.teacher_steps`` steps. Key ``k`` gives the images that
  ``get_sample_fn`` makes with key ``k`` for that sampler.
* :class:`PairCache`: the pairs made once, in batches of ``distill.teacher_batch``, into
  ``WORKDIR/distill/pairs/<name>.npy`` with ``pairs.json`` (CRC-32 of every file, the teacher's
  identity and the settings they were made with); read back memory-mapped. Chosen over pairs
  made on the fly by measurement (docs/performance.md, "Distillation pairs"): a pair costs
  several student steps, and the stage reuses every pair many times.
* :func:`check_teacher`: the distill stage records its teacher (``WORKDIR/distill/teacher.json``:
  each teacher stage's checkpoint step and a CRC-32 of its EMA parameters) when it starts, and
  refuses to resume (or to count as finished) with another teacher.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import zlib
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from pixdiff_jax import data, models, sampling
from pixdiff_jax.diffusion import samplers, schedules, students
from pixdiff_jax.errors import NotFoundError, UserError
from pixdiff_jax.sampling import sample_fn as sample_lib
from pixdiff_jax.storage import checkpointing
from pixdiff_jax.training import distill_loss
from pixdiff_jax.training.stages import TEACHER_STAGE, Stage, stage_key
from pixdiff_jax.utils import distributed, progress

PyTree = Any
DISTILL_DIR = 'distill'


class TeacherChangedError(UserError, ValueError):
  """The distill stage was started with another teacher (or other pair settings)."""


# ---------------------------------------------------------------------------- the teacher
def get_teacher_fn(config: ml_collections.ConfigDict, batch_size: int
                   ) -> Callable[[PyTree, jax.Array], dict[str, jax.Array]]:
  """``teacher(variables, key) -> pairs`` for ``batch_size`` pairs (see the module docstring;
  the pairs' keys and shapes are those of ``training/distill_loss.py``). ``variables`` as
  ``get_sample_fn``'s: ``{'vae', 'reverse'}`` or ``{'model'}``."""
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
  if config.method == 'ddpm':
    net = models.build_reverse_model(config)
    ac = schedules.ddpm_alphas_cumprod(config)
    clip = bool(config.sampling.clip_denoised)

    def ddpm_teacher(variables, key):
      x_T = students.draw_x_T(key, shape)

      def eps_fn(x, n):
        steps = jnp.broadcast_to(jnp.asarray(n), (batch_size,))
        return net.apply({'params': variables['model']}, x, steps, train=False)

      x0 = samplers.dpm_solver_pp_2m_sample(
          eps_fn, None, shape, alphas_cumprod=ac, num_steps=int(config.distill.teacher_steps),
          clip_denoised=clip, x_T=x_T)
      return {'x_T': x_T, 'x0': x0}

    return ddpm_teacher

  T = int(config.diffusion.num_steps)
  vae = models.build_vae(config)
  net = models.build_reverse_model(config)

  def teacher(variables, key):
    x_T, xd, _ = sample_lib.draw_start(config, vae, variables['vae'], key, batch_size,
                                       prior='scale')
    model_fn, head_fn = sample_lib.reverse_model_fns(net, variables['reverse'], batch_size, T)
    return pixel_aware_pairs(config, model_fn, head_fn, x_T, xd)

  return teacher


def pixel_aware_pairs(config: ml_collections.ConfigDict, model_fn, head_fn, x_T: jax.Array,
                      x_delta_hat: jax.Array) -> dict[str, jax.Array]:
  """The pairs of the K = T ``consistent`` sampler (``x0_jump``, eta 0, clip) run from ``x_T``
  with the reverse model ``model_fn`` / ``head_fn`` (``samplers.block_sequential_reverse``'s):
  ``x_delta_hat``, ``states [B, C, H, W, C]`` (its state at each of
  ``distill_loss.call_steps``) and ``x0 [B, T, H, W, C]`` (index ``j - 1``: its clipped
  clean-image estimate at step ``j``; index 0 is its output)."""
  d = config.diffusion
  T = int(d.num_steps)
  _, traj = samplers.block_sequential_reverse(
      model_fn, x_T, x_delta_hat, None, num_steps=T, network_calls=T, eta=0.0,
      clip_denoised=True, eps=d.eps, update='x0_jump', target=d.target, head_fn=head_fn,
      return_trajectory=True)
  # Block k of the K = T sampler starts at step T - k: state x_t is traj['x'][T - t], and the
  # estimate made at step j is traj['x0'][T - j].
  states = jnp.stack([traj['x'][T - t] for t in distill_loss.call_steps(config)], axis=1)
  x0 = jnp.moveaxis(traj['x0'][::-1], 0, 1)
  return {'x_delta_hat': x_delta_hat, 'states': states, 'x0': x0}


def teacher_variables(config: ml_collections.ConfigDict, params: dict[str, PyTree]
                      ) -> dict[str, PyTree]:
  """``get_sample_fn``'s ``variables`` from trained stage parameters ``{stage: params}``."""
  if config.method == 'ddpm':
    return {'model': params['ddpm']}
  return {'vae': params['vae'], 'reverse': params['reverse']}


def teacher_identity(config: ml_collections.ConfigDict, params: dict[str, PyTree],
                     steps: dict[str, int]) -> dict:
  """What the distill stage's targets depend on: each teacher stage's step and a CRC-32 of its
  (EMA) parameters, and the settings the pairs are made with."""
  stages = {}
  for name, p in params.items():
    sums = json.dumps(checkpointing.array_checksums(p), sort_keys=True)
    stages[name] = {'step': int(steps[name]), 'crc32': format(zlib.crc32(sums.encode()), '08x')}
  dd = config.distill
  settings = {'method': config.method, 'seed': int(config.seed),
              'num_pairs': int(dd.num_pairs), 'teacher_batch': int(dd.teacher_batch),
              'call_steps': list(distill_loss.call_steps(config))}
  if config.method == 'ddpm':
    settings.update(teacher_steps=int(dd.teacher_steps),
                    clip_denoised=bool(config.sampling.clip_denoised))
  return {'teacher': stages, 'pairs': settings}


def _describe(identity: dict) -> str:
  return ', '.join(f"{s} step {v['step']} (crc32 {v['crc32']})"
                   for s, v in sorted(identity['teacher'].items()))


def check_teacher(config: ml_collections.ConfigDict, workdir: str, identity: dict) -> None:
  """Records the teacher when the distill stage starts; refuses another one once it has.

  Raises:
    TeacherChangedError: the stage has checkpoints and ``WORKDIR/distill/teacher.json`` names
      another teacher or other pair settings (one line).
  """
  path = os.path.join(workdir, DISTILL_DIR, 'teacher.json')
  ckpt_dir = checkpointing.stage_dir(workdir, 'distill')
  started = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
  stored = _read_json(path)
  if started and stored is not None and stored != identity:
    if stored['teacher'] != identity['teacher']:
      what = (f'the teacher {_describe(stored)}, and the teacher is now {_describe(identity)}')
    else:
      what = (f"pairs made with {stored['pairs']}, and the config now asks for "
              f"{identity['pairs']}")
    teacher = TEACHER_STAGE[config.method]
    raise TeacherChangedError(
        f'stage distill in {workdir} was started with {what}: resuming would silently change '
        f'its targets. Restore the old {teacher} checkpoint and config, or distil anew: remove '
        f'{ckpt_dir} and {os.path.join(workdir, DISTILL_DIR)}')
  if started and stored is not None:
    return
  if started:
    logging.warning('stage distill: %s is missing; recording the current teacher', path)
  if jax.process_index() == 0:
    _write_json(path, identity)


# ---------------------------------------------------------------------------- the pair cache
def _crc32_file(path: str) -> str:
  crc = 0
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      crc = zlib.crc32(chunk, crc)
  return format(crc, '08x')


class PairCache:
  """The teacher's pairs in ``WORKDIR/distill/pairs`` (see the module docstring)."""

  def __init__(self, workdir: str):
    self.root = os.path.join(os.path.abspath(workdir), DISTILL_DIR)
    self.directory = os.path.join(self.root, 'pairs')
    self.manifest = os.path.join(self.root, 'pairs.json')

  def load(self, identity: dict) -> dict[str, np.ndarray] | None:
    """The cached pairs (memory-mapped) if they were made for ``identity`` and every file's
    CRC-32 matches; else ``None`` (with a log line saying why)."""
    meta = _read_json(self.manifest)
    if meta is None:
      return None
    if meta.get('identity') != identity:
      logging.info('stage distill: the cached pairs were made for another teacher or settings')
      return None
    pairs = {}
    for name, info in meta['files'].items():
      path = os.path.join(self.directory, f'{name}.npy')
      if not os.path.exists(path) or _crc32_file(path) != info['crc32']:
        logging.warning('stage distill: %s is missing or damaged (CRC-32); making the pairs '
                        'again', path)
        return None
      pairs[name] = np.load(path, mmap_mode='r')
    return pairs

  def make(self, config, variables: PyTree, identity: dict, key: jax.Array
           ) -> dict[str, np.ndarray]:
    """Runs the jitted teacher over ``distill.num_pairs`` pairs (batch ``b`` from
    ``fold_in(key, b)``) into the cache; returns them memory-mapped."""
    dd = config.distill
    n, batch = int(dd.num_pairs), int(dd.teacher_batch)
    teacher = jax.jit(get_teacher_fn(config, batch))
    tmp = self.directory + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    arrays, t0 = {}, time.perf_counter()
    num_batches = -(-n // batch)
    bar = progress.progress(total=num_batches, desc='distill pairs',
                            every=max(1, num_batches // 10))
    for b in range(num_batches):
      out = jax.device_get(teacher(variables, jax.random.fold_in(key, b)))
      for name, value in out.items():
        if name not in arrays:
          arrays[name] = np.lib.format.open_memmap(
              os.path.join(tmp, f'{name}.npy'), mode='w+', dtype=np.float32,
              shape=(n,) + value.shape[1:])
        m = min(batch, n - b * batch)
        arrays[name][b * batch:b * batch + m] = value[:m]
      bar.update(1)
    bar.close()
    for arr in arrays.values():
      arr.flush()
    names = list(arrays)
    arrays.clear()  # closes the memory maps
    files = {name: {'crc32': _crc32_file(os.path.join(tmp, f'{name}.npy'))} for name in names}
    shutil.rmtree(self.directory, ignore_errors=True)
    os.replace(tmp, self.directory)
    seconds = time.perf_counter() - t0
    _write_json(self.manifest, {'identity': identity, 'files': files,
                                'teacher_seconds': seconds, 'num_pairs': n})
    logging.info('stage distill: %d pairs made by the teacher in %.1f s (%s)', n, seconds,
                 self.directory)
    return self.load(identity)

  def load_or_make(self, config, variables, identity, key) -> dict[str, np.ndarray]:
    """The pairs, made by process 0 if not cached (the others wait), then read by all."""
    pairs = self.load(identity)
    if pairs is None:
      if jax.process_index() == 0:
        self.make(config, variables, identity, key)
      distributed.barrier('distill pairs', timeout_s=24 * 3600)
      pairs = self.load(identity)
      if pairs is None:
        raise NotFoundError(f'the distill pairs in {self.directory} could not be read back '
                            '(is the workdir shared by every process?)')
    return pairs


@dataclasses.dataclass
class PairBatches:
  """Endless, resumable iterator of this process's pair batches: the pairs of global batch
  ``step`` are ``data.batch_indices(step, ...)`` (epoch permutations of the seed), so resuming
  at ``s`` gives the uninterrupted run's batches. ``next()`` gives ``{name: float32 [D, b, ...]}``.
  """
  pairs: dict[str, np.ndarray]
  batch_size: int
  seed: int = 0
  start_step: int = 0

  def __post_init__(self):
    self.devices = jax.local_device_count()
    self.per_device = data.host_batch_size(self.batch_size, num_local_devices=self.devices,
                                           process_count=jax.process_count())
    self.step = int(self.start_step)
    self.num_pairs = len(next(iter(self.pairs.values())))

  def batch(self, step: int) -> dict[str, np.ndarray]:
    idx = data.batch_indices(step, num_examples=self.num_pairs, batch_size=self.batch_size,
                             seed=self.seed)
    per_host = self.batch_size // jax.process_count()
    idx = idx[jax.process_index() * per_host:(jax.process_index() + 1) * per_host]
    return {k: np.asarray(v[idx], np.float32).reshape((self.devices, self.per_device)
                                                     + v.shape[1:])
            for k, v in self.pairs.items()}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    out = self.batch(self.step)
    self.step += 1
    return out


# ---------------------------------------------------------------------------- the stage
def build_distill_stage(config: ml_collections.ConfigDict, workdir: str,
                        variables: dict[str, PyTree], identity: dict) -> Stage:
  """The distill stage: the student (the teacher's architecture) starts from the teacher's
  parameters ``variables`` (``teacher_variables``) and learns from the cached pairs."""
  dd = config.distill
  student = 'model' if config.method == 'ddpm' else 'reverse'
  net = models.build_reverse_model(config)
  loss = distill_loss.get_distill_loss_fn(config, net)
  cache = PairCache(workdir)
  pair_key = jax.random.fold_in(stage_key(config, 'distill'), 2**31 - 2)

  def batches(start: int) -> Iterator[dict[str, np.ndarray]]:
    pairs = cache.load_or_make(config, variables, identity, pair_key)
    return PairBatches(pairs, int(dd.batch_size), seed=int(config.seed), start_step=start)

  sample = sampling.get_sample_fn(config, batch_size=16, preset='distilled')
  optim = ml_collections.ConfigDict(config.optim.to_dict())
  optim.lr, optim.warmup_steps = float(dd.lr), int(dd.warmup_steps)
  initial = student_init(config, variables[student])
  return Stage('distill', int(dd.steps),
               init_params=lambda k: initial,
               loss_fn=lambda p, x, r, aux: loss(p, x, r, train=True),
               snapshot_fn=lambda p, r: sample({**variables, student: p}, r),
               batches=batches, initial_params=initial, optim=optim,
               lr_field='distill.lr')


def student_init(config: ml_collections.ConfigDict, teacher_params: PyTree) -> PyTree:
  """The student's parameters at step 0: the teacher's, with the output layer ``conv_out``
  zeroed when ``distill.output_init == 'zero'`` (DDPM)."""
  if config.distill.get('output_init', 'teacher') == 'teacher':
    return teacher_params
  params = dict(teacher_params)
  params['conv_out'] = jax.tree_util.tree_map(jnp.zeros_like, params['conv_out'])
  return params


# ---------------------------------------------------------------------------- files
def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _write_json(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
