"""The command line's flags, and the config flag's loading errors turned into one line."""
from __future__ import annotations

import os
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from pixdiff_jax.cli.errors import fail

FLAGS = flags.FLAGS
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN_JOB_CONFIG = os.path.join(_ROOT, 'configs', 'fashion_mnist.py')
MAIN_JOB_WORKDIR = os.path.join('runs', 'fmnist')


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
  from pixdiff_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  path = _argv_config_path(argv)
  try:
    base = config_lib.load_config_file(path)
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
  fail(_unknown_field_message(sys.argv)
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
flags.DEFINE_enum('stage', 'all', ['all', 'vae', 'reverse', 'ddpm', 'distill'],
                  'Which training stage(s) to run (train mode). distill: the one-pass student '
                  '(distill.steps > 0), after a finished reverse (or ddpm) stage.')
flags.DEFINE_bool('memory_plan', True,
                  "Info mode: also compile each stage's train step for this machine's backend "
                  "(nothing runs) and print XLA's memory plan per device (memory_gib); "
                  '--nomemory_plan prints the parameter counts only.')
flags.DEFINE_integer('num_samples', 64, 'Number of images to generate (sample mode).')
flags.DEFINE_string('sample_name', None,
                    'Base name of WORKDIR/samples/<name>.npz/.png (default: from the sampler).')
flags.DEFINE_integer('sample_seed', 0, 'Seed of the sampling RNG (sample mode).')
flags.DEFINE_integer('chunk_images', 0,
                     'Sample mode writes its images in chunks of this many (whole batches) into '
                     'WORKDIR/samples/<name>.chunks/, so that an interrupted request resumes; '
                     '0: 10,000, or as many as fit in 256 MB if fewer.')
flags.DEFINE_float('max_npz_gb', 4.0,
                   'Sample mode assembles the chunks into <name>.npz when the images take at '
                   'most this many GB (uncompressed); larger requests keep the chunk folder as '
                   'their output.')
flags.DEFINE_float('max_hours', None,
                   'Sample mode: the longest estimated run accepted (measured on the first '
                   'batch); without it, a request estimated at more than 24 h needs --yes.')
flags.DEFINE_bool('yes', False,
                  'Sample mode: go ahead with a request estimated to take longer than the limit '
                  'or to need more disk space than is free.')
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
  if (isinstance(err, AttributeError) and getattr(err, 'name', None) == 'get_config') or (
      "has no attribute 'get_config'" in str(err)):
    return (f'config file {path} has no get_config() function (a config file defines '
            '`def get_config():` returning an ml_collections.ConfigDict; see configs/smoke.py)')
  unknown = _unknown_field_message(argv)
  if unknown:
    return unknown
  text = ' '.join(str(err).split())
  if isinstance(err, flags.Error):
    return text
  return f'cannot load the config {path}: {type(err).__name__}: {text}'


def parse_flags(argv):
  """absl flag parsing, with config loading errors turned into one line."""
  try:
    rest = FLAGS(argv)
    config = FLAGS.config
    if config is not None:
      config.get('method')  # a config file that failed to load raises here
    return rest
  except Exception as err:  # pylint: disable=broad-except
    fail(_config_error_message(err, argv), err)
