"""pixdiff_jax command line: train, sample from and inspect pixel-aware diffusion models.

Modes (--mode), one example each:

  train   (default) train every stage of a config into a workdir, resuming what is there:
            python main.py        # the main job: configs/fashion_mnist.py into runs/fmnist
  sample  generate images with the networks of a workdir (its stored config.json):
            python main.py --mode sample --workdir runs/fmnist --num_samples 64
  info    parameter counts of a config's networks, without building them:
            python main.py --mode info --config configs/cifar10.py
  eval    sample quality (FD_efflite0, FID), cost and speed of sampler settings (config.eval):
            python main.py --mode eval --workdir runs/fmnist --config.eval.num_samples=2000
  compare one table over evaluated workdirs:
            python main.py --mode compare --workdirs runs/fmnist,runs/ddpm_fmnist
  figures the paper's figures for a workdir:
            python main.py --mode figures --workdir runs/fmnist

Without --config, train mode uses WORKDIR/config.json if it exists and configs/fashion_mnist.py
otherwise; sample, eval and figures always take the networks from WORKDIR/config.json, and a
--config only supplies the sampler settings (eval and figures: the eval section, and its networks
must match the workdir's). Any config field can be overridden, with or without --config, e.g. --config.training.batch_size=32 or --config.sampling.preset=paper.
"""
from __future__ import annotations

import json
import logging as std_logging
import os
import sys
import time

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
_ROOT = os.path.dirname(os.path.abspath(__file__))
MAIN_JOB_CONFIG = os.path.join(_ROOT, 'configs', 'fashion_mnist.py')
MAIN_JOB_WORKDIR = os.path.join('runs', 'fmnist')



# ---------------------------------------------------------------------------- user mistakes
# Every user mistake ends here: one line `error: ...` on stderr and exit status 2
# (PIXDIFF_TRACEBACK=1 shows the traceback instead).
def _fail(message: str, err: BaseException | None = None) -> None:
  if err is not None and os.environ.get('PIXDIFF_TRACEBACK'):
    raise err
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _argv_config_path(argv) -> str | None:
  """The value of --config in ``argv`` (or the flag's default)."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  try:
    default = FLAGS['config'].default
  except KeyError:  # while the flag itself is being defined
    default = MAIN_JOB_CONFIG
  return default if isinstance(default, str) else MAIN_JOB_CONFIG


def _unknown_field_message(argv) -> str | None:
  """For the first ``--config.a.b=v`` whose path is not in the config: a line naming it, with
  the closest field names (difflib), or None if every override path exists."""
  import difflib  # pylint: disable=g-import-not-at-top
  from pixdiff_jax import config_utils  # pylint: disable=g-import-not-at-top
  path = _argv_config_path(argv)
  try:
    base = config_utils.load_config_file(path)
  except Exception:  # pylint: disable=broad-except  (reported by the caller)
    return None
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    dotted = arg[len('--config.'):].split('=', 1)[0]
    node, done, parts = base, [], dotted.split('.')
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        where = '.'.join(done) or 'the config'
        close = difflib.get_close_matches(part, fields, n=1, cutoff=0.6)
        if close:
          hint = f"; did you mean --config.{'.'.join(done + close + parts[i + 1:])}?"
        elif fields:
          hint = f'; {where} has: {", ".join(fields)}'
        else:
          hint = f'; {where} is a value, not a section'
        return f'unknown config field {dotted!r} in {arg}{hint}'
      node = node[part]
      done.append(part)
  return None


def _bad_override(err: Exception):
  """ml_collections raises AttributeError/KeyError for --config.a.b=c naming no field."""
  _fail(_unknown_field_message(sys.argv)
        or f'a --config.* override names a field the config does not have: {err}', err)


# The default is loaded only so that --config.a.b=c overrides parse without --config;
# main() decides which config a mode really uses (see the module docstring).
try:
  config_flags.DEFINE_config_file(
      'config', MAIN_JOB_CONFIG, 'Path to a config file (configs/*.py). Default: the '
      "workdir's stored config.json if there is one, else configs/fashion_mnist.py (the main "
      'job).', lock_config=True)
except (AttributeError, KeyError) as e:
  _bad_override(e)
flags.DEFINE_string('workdir', MAIN_JOB_WORKDIR,
                    'Directory for checkpoints, samples and metrics.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'info', 'eval', 'compare', 'figures'],
                  'What to do; see the examples above.')
flags.DEFINE_enum('stage', 'all', ['all', 'vae', 'reverse', 'ddpm'],
                  'Which training stage(s) to run (train mode).')
flags.DEFINE_integer('num_samples', 64, 'Number of images to generate (sample mode).')
flags.DEFINE_string('sample_name', None,
                    'Base name of WORKDIR/samples/<name>.npz/.png (default: from the sampler).')
flags.DEFINE_integer('sample_seed', 0, 'Seed of the sampling RNG (sample mode).')
flags.DEFINE_list('workdirs', [], 'Evaluated workdirs to tabulate together (compare mode).')
flags.DEFINE_string('compare_out', 'comparison',
                    'compare mode writes <compare_out>.md and <compare_out>.json.')
flags.DEFINE_bool('distributed', False,
                  'Join a multi-process job (one process per machine; see README "Training on '
                  'several machines"). Without --coordinator/--num_processes/--process_id, JAX '
                  'auto-detects the job (SLURM srun, cloud TPU, JAX_COORDINATOR_ADDRESS etc.).')
flags.DEFINE_string('coordinator', None,
                    'With --distributed: HOST:PORT of process 0, which runs the coordinator.')
flags.DEFINE_integer('num_processes', None, 'With --distributed: number of processes.')
flags.DEFINE_integer('process_id', None,
                     'With --distributed: this process, 0 .. num_processes - 1.')
flags.DEFINE_float('distributed_timeout', 60.0,
                   'With --distributed: seconds for all processes to connect (and to notice a '
                   'vanished one) before ending with an error.')


flags.DEFINE_string('compilation_cache', os.path.expanduser('~/.cache/pixdiff_jax/xla'),
                    "JAX persistent compilation cache directory ('' disables it).")


class UsageError(Exception):
  """A user mistake: printed as one line, no traceback."""


def _config_error_message(err: BaseException, argv) -> str:
  """One line for an exception raised while loading the config flag."""
  chain, e = [], err
  while e is not None and e not in chain:
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in chain:
    if isinstance(e, SyntaxError):
      return (f'syntax error in config file {e.filename}, line {e.lineno}: {e.msg}'
              + (f': {e.text.strip()}' if e.text else ''))
  path = _argv_config_path(argv)
  if path is not None and not os.path.exists(path.split(':', 1)[0]):
    return f'config file {path} not found (give one of configs/*.py)'
  unknown = _unknown_field_message(argv)
  if unknown:
    return unknown
  text = ' '.join(str(err).split())
  if isinstance(err, flags.Error):
    return text
  return f'cannot load the config {path}: {type(err).__name__}: {text}'


def _parse_flags(argv):
  """absl flag parsing, with config loading errors turned into one line."""
  try:
    rest = FLAGS(argv)
    config = FLAGS.config
    if config is not None:
      config.get('method')  # a config file that failed to load raises here
    return rest
  except Exception as err:  # pylint: disable=broad-except
    _fail(_config_error_message(err, argv), err)


def _check_writable_dir(path: str, what: str) -> None:
  """Creates ``path`` if needed and writes a probe file into it; a UsageError if that fails."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise UsageError(f'{what} {path} is a file, not a directory')
  try:
    os.makedirs(path, exist_ok=True)
    import tempfile  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as err:
    raise UsageError(f'cannot write to {what} {path}: {err.strerror or err}') from err


def _info(config) -> dict:
  from pixdiff_jax import models  # pylint: disable=g-import-not-at-top
  return models.count_params(config)


def _sample(config, workdir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import checkify  # pylint: disable=g-import-not-at-top
  from pixdiff_jax import config_utils, data, distributed, image_grid, progress, sampling  # pylint: disable=g-import-not-at-top

  stored = config_utils.load_config(workdir)
  # The stored config defines the networks; the command line's config supplies the sampler.
  config_utils.check_compatible(stored, config)
  n = FLAGS.num_samples
  if n < 1:
    raise UsageError(f'--num_samples must be >= 1, got {n}')
  out_dir = os.path.join(workdir, 'samples')
  _check_writable_dir(out_dir, 'samples folder')  # before any work
  batch = min(config.sampling.batch_size, n)
  s = config.sampling
  # The command line's sampling section with its preset applied is the whole sampler; passed
  # as 'custom' so that the workdir's stored sampling fields play no part.
  settings = config_utils.sampler_settings(config)
  fields = ('sampler', 'network_calls', 'eta', 'clip_denoised', 'prior', 'update', 'num_steps')
  sample_fn, variables = sampling.load_sampler(
      workdir, batch_size=batch, use_ema=s.use_ema, preset='custom', check_finite=True,
      **{k: settings[k] for k in fields})
  steps = sample_fn.checkpoint_steps
  print('sampling from checkpoints: ' + ', '.join(
      f'{stage} step {step}' for stage, step in steps.items()), file=sys.stderr, flush=True)
  key = jax.random.PRNGKey(FLAGS.sample_seed)
  t0 = time.perf_counter()
  compiled = jax.jit(sample_fn).lower(variables, key).compile()
  compile_seconds = time.perf_counter() - t0
  chunks, times = [], []
  # Batch b uses key fold_in(key, b) whichever process draws it: process p of P draws batches
  # p, p + P, ... and process 0 gathers them, so the images do not depend on the process layout.
  num_batches = -(-n // batch)
  mine = distributed.my_items(num_batches)
  bar = progress.progress(total=len(mine), desc='sample', every=max(1, len(mine) // 10),
                          disable=jax.process_index() != 0)
  for b in mine:
    t0 = time.perf_counter()
    err, images = jax.block_until_ready(compiled(variables, jax.random.fold_in(key, b)))
    times.append(time.perf_counter() - t0)
    try:
      err.throw()
    except checkify.JaxRuntimeError as e:
      raise UsageError(f'{str(e).splitlines()[0]} (checkpoints {steps} in {workdir})') from e
    chunks.append(data.to_uint8(np.asarray(images)))
    bar.update(1)
  bar.close()
  local = np.stack(chunks) if chunks else np.zeros(
      (0, batch, stored.data.image_size, stored.data.image_size, stored.data.num_channels),
      np.uint8)
  images = distributed.gather_items(local, num_batches).reshape((-1,) + local.shape[2:])[:n]
  if jax.process_index() != 0:
    return {}
  st = dict(sample_fn.settings, preset=settings['preset'])
  name = FLAGS.sample_name or (
      f"{st['sampler']}_{st['preset']}_K{st['network_calls']}_eta{st['eta']:g}_{st['update']}"
      if config.method == 'pixel_aware' else f"{st['sampler']}_S{sample_fn.network_evals}")
  npz_path = os.path.join(out_dir, f'{name}.npz')
  png_path = os.path.join(out_dir, f'{name}.png')
  np.savez_compressed(npz_path, images=images)
  image_grid.save_grid(png_path, images[:min(n, 100)])
  return {'npz': npz_path, 'png': png_path, 'num_samples': int(n),
          'network_evals': int(sample_fn.network_evals), 'settings': st,
          'checkpoint_steps': steps, 'compile_seconds': compile_seconds,
          # Every batch runs the executable compiled above: no compilation is timed here.
          'seconds_per_image_after_compile': float(np.sum(times)) / (len(times) * batch)}


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax, JAX and TFDS internals (e.g. JAX's "Unable to initialize
  backend 'tpu'" on every machine without a TPU); their warnings and errors still show."""

  def filter(self, record):
    if record.levelno >= std_logging.WARNING:
      return True
    path = record.pathname.replace(os.sep, '/')
    return not any(f'/{lib}/' in path
                   for lib in ('orbax', 'jax', 'jaxlib', 'etils', 'tensorflow_datasets'))


def _ignore_closed_event_loop(unraisable):
  """Orbax's asyncio callbacks that outlive a failed restore of a damaged checkpoint print
  'Exception ignored ... Event loop is closed' tracebacks; the failure itself is reported."""
  err = unraisable.exc_value
  if isinstance(err, RuntimeError) and str(err) == 'Event loop is closed':
    return
  sys.__unraisablehook__(unraisable)


def _setup_runtime():
  # On absl's handler: it sees the records of every logger (JAX logs through its own loggers,
  # which propagate to the root logger that absl's handler is attached to).
  logging.get_absl_handler().addFilter(_QuietLibraries())
  sys.unraisablehook = _ignore_closed_event_loop
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', FLAGS.compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def _config_for(mode: str, workdir: str):
  """The config a mode runs with; see the module docstring.

  An explicit --config wins (in sample mode it supplies only the sampler settings). Otherwise
  the workdir's stored config.json, with any --config.a.b=c overrides applied; otherwise
  (train and info) the main job's configs/fashion_mnist.py.
  """
  from pixdiff_jax import config_utils  # pylint: disable=g-import-not-at-top
  if FLAGS['config'].present or mode == 'info':
    return FLAGS.config
  if mode in ('sample', 'eval', 'figures') or os.path.exists(config_utils.config_path(workdir)):
    config = config_utils.load_config(workdir)
    if mode in ('eval', 'figures') and 'eval' not in config:  # trained before config.eval
      from pixdiff_jax import evaluation  # pylint: disable=g-import-not-at-top
      config.eval = evaluation.default_eval_config()
    for dotted, value in config_flags.get_override_values(FLAGS['config']).items():
      *parents, leaf = dotted.split('.')
      node = config
      for name in parents:
        node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
      if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise UsageError(f'--config.{dotted}: no such field in {config_utils.config_path(workdir)}')
      node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], tuple) else value
    return config
  return FLAGS.config


def _files_written(workdir: str) -> list[str]:
  """Human-readable lines naming what a train run left in ``workdir``."""
  lines = []
  ckpt_root = os.path.join(workdir, 'checkpoints')
  for stage in sorted(os.listdir(ckpt_root)) if os.path.isdir(ckpt_root) else []:
    if stage.endswith('-broken'):
      lines.append(f'  {"moved aside":<13} {os.path.join(ckpt_root, stage)}  (unreadable steps)')
      continue
    steps = sorted(int(d) for d in os.listdir(os.path.join(ckpt_root, stage)) if d.isdigit())
    if steps:
      lines.append(f'  {"checkpoints":<13} {os.path.join(ckpt_root, stage, str(steps[-1]))}  '
                   f'(stage {stage}, step {steps[-1]})')
  for name, what in (('config.json', 'the config of this run'),
                     ('metrics.jsonl', 'one JSON line per logged step')):
    if os.path.exists(os.path.join(workdir, name)):
      lines.append(f'  {name:<13} {os.path.join(workdir, name)}  ({what})')
  samples = os.path.join(workdir, 'samples')
  if os.path.isdir(samples):
    pngs = sorted((f for f in os.listdir(samples) if f.endswith('.png')),
                  key=lambda f: os.path.getmtime(os.path.join(samples, f)))
    if pngs:
      lines.append(f'  {"samples":<13} {samples}/  ({len(pngs)} PNG grids, newest {pngs[-1]})')
  tb = os.path.join(workdir, 'tensorboard')
  if os.path.isdir(tb):
    lines.append(f'  {"tensorboard":<13} tensorboard --logdir {tb}')
  return lines


def _start_distributed():
  """--distributed: joins the multi-process job; only process 0 logs at INFO level."""
  from pixdiff_jax import distributed  # pylint: disable=g-import-not-at-top
  given = [n for n in ('coordinator', 'num_processes', 'process_id')
           if FLAGS[n].value is not None]
  if not FLAGS.distributed:
    if given:
      raise UsageError(f'--{given[0]} needs --distributed')
    return
  if FLAGS.distributed_timeout <= 0:
    raise UsageError(f'--distributed_timeout must be > 0, got {FLAGS.distributed_timeout}')
  distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                         timeout_s=FLAGS.distributed_timeout)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  logging.info('process %d of %d; %d devices in all (%d here)', jax.process_index(),
               jax.process_count(), jax.device_count(), jax.local_device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _setup_runtime()
  from pixdiff_jax import distributed  # pylint: disable=g-import-not-at-top
  try:
    if not FLAGS.workdir and FLAGS.mode != 'info':
      raise UsageError(f'--workdir must not be empty for --mode {FLAGS.mode}')
    if FLAGS.mode == 'compare':
      from pixdiff_jax import analysis_cli  # pylint: disable=g-import-not-at-top
      print(json.dumps(analysis_cli.run('compare', None, workdir=None, workdirs=FLAGS.workdirs,
                                        compare_out=FLAGS.compare_out), indent=2))
      return
    config = _config_for(FLAGS.mode, FLAGS.workdir)
    if FLAGS.mode in ('eval', 'figures'):
      from pixdiff_jax import analysis_cli  # pylint: disable=g-import-not-at-top
      print(json.dumps(analysis_cli.run(FLAGS.mode, config, workdir=FLAGS.workdir,
                                        workdirs=[], compare_out=''), indent=2))
      return
    if FLAGS.mode == 'info':
      print(json.dumps(_info(config), indent=2))
      return
    _start_distributed()
    if FLAGS.mode == 'train':
      from pixdiff_jax import train  # pylint: disable=g-import-not-at-top
      stages = None if FLAGS.stage == 'all' else [FLAGS.stage]
      _check_writable_dir(FLAGS.workdir, '--workdir')
      try:
        train.train(config, FLAGS.workdir, stages=stages)
      except train.TrainingInterrupted as stop:
        # Ctrl-C / SIGTERM: the checkpoint is written; one line says which.
        print(f'interrupted: {stop.note}', file=sys.stderr)
        sys.exit(128 + int(stop.signum))
      except train.TrainingDivergedError as err:
        _fail(str(err), err)
      _report(f'training finished; {FLAGS.workdir} holds:', _files_written(FLAGS.workdir))
    else:
      if not os.path.isdir(FLAGS.workdir):
        raise UsageError(f'--workdir {FLAGS.workdir} is not a directory; train first with '
                         f'--mode train')
      summary = _sample(config, FLAGS.workdir)
      if summary:  # process 0 only
        print(json.dumps(summary, indent=2))
        _report(f'sampling finished ({summary["num_samples"]} images, '
                f'{summary["network_evals"]} network calls each); wrote:',
                [f'  images  {summary["npz"]}  (uint8 [N, H, W, C], key "images")',
                 f'  grid    {summary["png"]}'])
  except (UsageError, ValueError, FileNotFoundError, distributed.DistributedError) as err:
    # User mistakes (bad config, missing data or checkpoints) end in one readable line; in a
    # multi-process job the other processes end with it too (instead of waiting for this one).
    if os.environ.get('PIXDIFF_TRACEBACK'):
      raise
    print(f'error: {err}', file=sys.stderr)
    distributed.report_failure(str(err))
    distributed.exit_after_failure(2)
  except KeyboardInterrupt:
    if os.environ.get('PIXDIFF_TRACEBACK') or distributed.is_active():
      raise
    print('interrupted', file=sys.stderr)
    sys.exit(130)
  except BaseException as err:  # pylint: disable=broad-except
    if not distributed.is_active():
      raise
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    distributed.report_failure(f'{type(err).__name__}: {err}')
    distributed.exit_after_failure(1)
  distributed.finish()


def _report(title: str, lines: list[str]) -> None:
  """The end-of-mode summary, on stderr (stdout carries the JSON result where there is one)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print('\n'.join([title, *lines]), file=sys.stderr, flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
