"""User mistakes derive from ``pixdiff_jax.errors.UserError`` (one line, exit 2); anything else
keeps its traceback. Also the smaller one-line cases of issue 25 (config file without
``get_config``, compare of a missing workdir, no workdir left behind by a failed validation).
"""
import os
import subprocess
import sys

import pytest

from cli_testutil import ROOT, error_lines, main_env, run_main
from pixdiff_jax import errors


def test_every_user_mistake_class_is_a_user_error_and_keeps_its_old_base():
  # pylint: disable=g-import-not-at-top
  from pixdiff_jax import data, evaluation, metrics
  from pixdiff_jax.cli.errors import UsageError
  from pixdiff_jax.data import celeba_images, cifar10_archive
  from pixdiff_jax.storage import checkpointing
  from pixdiff_jax.training import trainer
  from pixdiff_jax.utils import distributed
  # pylint: enable=g-import-not-at-top
  old_bases = {
      errors.ConfigError: ValueError, errors.InputError: ValueError,
      errors.NotFoundError: FileNotFoundError, errors.WriteError: OSError,
      UsageError: Exception, evaluation.EvalError: ValueError,
      checkpointing.CheckpointMismatchError: ValueError,
      checkpointing.CheckpointUnreadableError: ValueError,
      checkpointing.NoReadableCheckpointError: FileNotFoundError,
      data.DatasetNotFoundError: ValueError, cifar10_archive.ArchiveError: ValueError,
      celeba_images.NoImagesError: FileNotFoundError, metrics.WeightsNotFoundError: ValueError,
      distributed.DistributedError: Exception, trainer.TrainingDivergedError: Exception,
  }
  for cls, old in old_bases.items():
    assert issubclass(cls, errors.UserError) and issubclass(cls, old), cls
  # Not user mistakes: a Ctrl-C and a plain ValueError stay what they are.
  assert not issubclass(trainer.TrainingInterrupted, errors.UserError)
  assert not issubclass(ValueError, errors.UserError)


def test_config_checks_raise_config_errors():
  from pixdiff_jax import config as config_lib, models  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(str(ROOT / 'configs' / 'smoke.py'))
  config.training.batch_size = 0
  with pytest.raises(errors.ConfigError, match='training.batch_size must be >= 1'):
    config_lib.validate_config(config)
  config = config_lib.load_config_file(str(ROOT / 'configs' / 'smoke.py'))
  config.optim.lr = 0.0  # checked before anything is written (was: in the optimiser)
  with pytest.raises(errors.ConfigError, match='optim.lr must be > 0, got 0.0'):
    config_lib.validate_config(config)
  config = config_lib.load_config_file(str(ROOT / 'configs' / 'smoke.py'))
  config.model.dtype = 'float16'
  with pytest.raises(errors.ConfigError, match="model.dtype='float16' is unknown"):
    models.validate_config(config)


def test_write_failure_reason_reads_os_errors_and_tensorstore_text():
  assert errors.write_failure_reason(OSError(28, 'No space left on device')) == (
      'No space left on device')
  orbax = ValueError('RESOURCE_EXHAUSTED: Error writing "a/0" ... Failed to write 632982 bytes '
                     "to file 12: No space left on device [os_error_code='28']")
  assert errors.write_failure_reason(orbax) == os.strerror(28)
  wrapped = RuntimeError('save failed')
  wrapped.__cause__ = orbax
  assert errors.write_failure_reason(wrapped) == os.strerror(28)
  # Not write failures: a missing file, a bug.
  assert errors.write_failure_reason(FileNotFoundError(2, 'No such file')) is None
  assert errors.write_failure_reason(ValueError('shapes differ')) is None
  with pytest.raises(errors.WriteError, match=r'^cannot write metrics /x/m: No space left'):
    with errors.writing('/x/m', 'metrics'):
      raise OSError(28, 'No space left on device')
  with pytest.raises(KeyError):  # anything else passes through unchanged
    with errors.writing('/x/m'):
      raise KeyError('k')


def test_a_bug_keeps_its_traceback():
  """A ValueError that is not a user mistake is not turned into an `error:` line."""
  code = ("import sys\n"
          "sys.argv = ['main.py', '--config', 'configs/smoke.py', '--mode', 'info']\n"
          "from pixdiff_jax.cli import main\n"
          "def bug(config):\n"
          "  raise ValueError('a bug in our code')\n"
          "main._info = bug\n"
          "main.run()\n")
  run = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**main_env(), 'PYTHONPATH': str(ROOT)})
  assert run.returncode == 1, run.stderr[-2000:]
  assert 'Traceback' in run.stderr and 'ValueError: a bug in our code' in run.stderr
  assert not error_lines(run.stderr)


# ---------------------------------------------------------------------------- smaller items
def test_config_file_without_get_config_is_named(tmp_path):
  path = tmp_path / 'my_config.py'
  path.write_text('x = 1\n')
  run = run_main('--config', path, '--mode', 'info', timeout=120)
  assert run.returncode == 2 and 'Traceback' not in run.stderr, run.stderr[-2000:]
  assert error_lines(run.stderr) == [
      f'error: config file {path} has no get_config() function (a config file defines '
      '`def get_config():` returning an ml_collections.ConfigDict; see configs/smoke.py)']
  print(error_lines(run.stderr)[0])


def test_compare_of_a_missing_workdir_says_so(tmp_path):
  missing = tmp_path / 'nope'
  run = run_main('--mode', 'compare', '--workdirs', missing, '--compare_out',
                 tmp_path / 'c', timeout=120)
  assert run.returncode == 2 and 'Traceback' not in run.stderr, run.stderr[-2000:]
  assert error_lines(run.stderr) == [f'error: --workdirs: {missing} does not exist']
  assert not (tmp_path / 'c.md').exists()
  print(error_lines(run.stderr)[0])


def test_failed_validation_leaves_no_workdir(tmp_path):
  workdir = tmp_path / 'a' / 'w'
  run = run_main('--config', 'configs/smoke.py', '--workdir', workdir,
                 '--config.training.batch_size=0', timeout=120)
  assert run.returncode == 2, run.stderr[-2000:]
  assert error_lines(run.stderr) == ['error: training.batch_size must be >= 1, got 0']
  assert not (tmp_path / 'a').exists()
