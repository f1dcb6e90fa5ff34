"""The command line's entry point: parses flags, picks the config a mode runs with and runs the
mode (``main.py`` at the repository root calls ``run``; its docstring is the ``--help`` text)."""
from __future__ import annotations

import json
import logging as std_logging
import os
import sys

from absl import app, logging
from ml_collections import config_flags

from pixdiff_jax.cli import report as report_lib, sample_mode, train_mode
from pixdiff_jax.cli.errors import UsageError
from pixdiff_jax.cli.flags import FLAGS, parse_flags
from pixdiff_jax.errors import UserError, write_failure_reason


def _info(config) -> dict:
  """Parameter counts and (unless --nomemory_plan) each stage's compiled memory plan."""
  from pixdiff_jax import models  # pylint: disable=g-import-not-at-top
  info = models.count_params(config)
  if FLAGS.memory_plan:
    from pixdiff_jax.training import memory_plan  # pylint: disable=g-import-not-at-top
    info.update(memory_plan.plan_stages(config))
  return info


def _note_dtype(config) -> None:
  """One line on stderr when a bfloat16 compute dtype is asked for on the CPU."""
  from pixdiff_jax import models  # pylint: disable=g-import-not-at-top
  note = models.bfloat16_on_cpu_note(config)
  if note:
    print(f'note: {note}', file=sys.stderr, flush=True)


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax, JAX and TFDS internals (e.g. JAX's "Unable to initialize
  backend 'tpu'" on every machine without a TPU); their warnings and errors still show, except
  Orbax's tracebacks of a failed checkpoint write (a full disk): the same failure reaches the
  command line, which names the checkpoint in one line (``PIXDIFF_TRACEBACK=1`` shows them)."""

  def filter(self, record):
    path = record.pathname.replace(os.sep, '/')
    if record.levelno >= std_logging.WARNING:
      if '/orbax/' in path and not os.environ.get('PIXDIFF_TRACEBACK'):
        err = record.exc_info[1] if record.exc_info else None
        if write_failure_reason(err or Exception(record.getMessage())) is not None:
          return False
      return True
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
  if FLAGS.compilation_cache:
    from pixdiff_jax.utils import xla_cache  # pylint: disable=g-import-not-at-top
    xla_cache.use(FLAGS.compilation_cache)


def _config_for(mode: str, workdir: str):
  """The config a mode runs with; see the module docstring.

  An explicit --config wins (in sample mode it supplies only the sampler settings). Otherwise
  the workdir's stored config.json, with any --config.a.b=c overrides applied; otherwise
  (train and info) the main job's configs/fashion_mnist.py.
  """
  from pixdiff_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  if FLAGS['config'].present or mode == 'info':
    return FLAGS.config
  if mode in ('sample', 'eval', 'figures') or os.path.exists(config_lib.config_path(workdir)):
    config = config_lib.load_config(workdir)
    if mode in ('eval', 'figures') and 'eval' not in config:  # trained before config.eval
      config.eval = config_lib.default_eval_config()
    config_lib.apply_overrides(config, config_flags.get_override_values(FLAGS['config']),
                               config_lib.config_path(workdir))
    return config
  return FLAGS.config


def _start_distributed():
  """--distributed: joins the multi-process job; only process 0 logs at INFO level."""
  from pixdiff_jax.utils import distributed  # pylint: disable=g-import-not-at-top
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
  from pixdiff_jax.utils import distributed  # pylint: disable=g-import-not-at-top
  try:
    if not FLAGS.workdir and FLAGS.mode != 'info':
      raise UsageError(f'--workdir must not be empty for --mode {FLAGS.mode}')
    if FLAGS.mode == 'compare':
      from pixdiff_jax.cli import analysis as analysis_cli  # pylint: disable=g-import-not-at-top
      print(json.dumps(analysis_cli.run('compare', None, workdir=None, workdirs=FLAGS.workdirs,
                                        compare_out=FLAGS.compare_out), indent=2))
      return
    config = _config_for(FLAGS.mode, FLAGS.workdir)
    if FLAGS.mode not in ('train', 'sample'):  # those after joining a distributed job, which
      _note_dtype(config)                      # must precede any use of JAX's backends
    if FLAGS.mode in ('eval', 'figures'):
      from pixdiff_jax.cli import analysis as analysis_cli  # pylint: disable=g-import-not-at-top
      print(json.dumps(analysis_cli.run(FLAGS.mode, config, workdir=FLAGS.workdir,
                                        workdirs=[], compare_out=''), indent=2))
      return
    if FLAGS.mode == 'info':
      print(json.dumps(_info(config), indent=2))
      return
    _start_distributed()
    _note_dtype(config)
    if FLAGS.mode == 'train':
      train_mode.train(config, FLAGS.workdir, FLAGS.stage)
      report_lib.report(f'training finished; {FLAGS.workdir} holds:',
                        report_lib.files_written(FLAGS.workdir))
    else:
      if not os.path.isdir(FLAGS.workdir):
        raise UsageError(f'--workdir {FLAGS.workdir} is not a directory; train first with '
                         f'--mode train')
      summary = sample_mode.sample(config, FLAGS.workdir)
      if summary:  # process 0 only
        print(json.dumps(summary, indent=2))
        sample_mode.report(summary)
  except UserError as err:
    # User mistakes (bad config, missing data or checkpoints, a full disk) end in one readable
    # line; in a multi-process job the other processes end with it too (instead of waiting for
    # this one). Anything else is a bug and keeps its traceback.
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


def run() -> None:
  """Runs the command line (absl's ``app.run`` with one-line config errors)."""
  app.run(main, flags_parser=parse_flags)
