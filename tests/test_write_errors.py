"""A full disk (or any failed write) during training: one line naming the file, the last intact
checkpoint and what to do; the partial checkpoint step is removed.

The end-to-end test trains into a 1.2 MB tmpfs (needs root to mount; skipped otherwise). The unit
tests simulate the failures (a write to ``/dev/full``, an Orbax-style error) and always run.
(Resuming after the space is freed was checked by hand: the same command finishes the stage.)
"""
import logging
import os
import pathlib
import re
import subprocess
import threading

import numpy as np
import pytest

from cli_testutil import error_lines, run_main
from pixdiff_jax import config as config_lib, errors
from pixdiff_jax.cli import train_mode
from pixdiff_jax.storage import checkpointing
from pixdiff_jax.utils import image_grid, metric_writer

ENOSPC_TEXT = ('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database: Failed to write '
               "4096 bytes to file 12: No space left on device [os_error_code='28']")
FULL = os.strerror(28)  # 'No space left on device'


@pytest.fixture
def tmpfs(tmp_path):
  """A 1.2 MB tmpfs at ``tmp_path / 'disk'`` (a smoke VAE checkpoint takes about 0.75 MB),
  unmounted afterwards (skip if it cannot be mounted)."""
  where = tmp_path / 'disk'
  where.mkdir()
  mount = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1200k', 'tmpfs', str(where)],
                         capture_output=True, text=True)
  if mount.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here ({mount.stderr.strip()}); the unit tests below '
                'simulate the failure instead')
  try:
    yield where
  finally:
    subprocess.run(['umount', '-l', str(where)], check=False)


def test_training_into_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmpfs):
  workdir = tmpfs / 'w'
  args = ['--config', 'configs/smoke.py', '--workdir', workdir, '--stage', 'vae',
          '--config.training.snapshot_every=0']
  run = run_main(*args, timeout=300)
  stage = workdir / 'checkpoints' / 'vae'
  assert run.returncode == 2, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr and len(error_lines(run.stderr)) == 1, run.stderr[-3000:]
  # Step 4 fits into 1.2 MB, step 6 does not. Usually its checkpoint write is what fails; the
  # checkpoint is written asynchronously, so the metrics of step 6 may hit the full disk first.
  line = error_lines(run.stderr)[0]
  print(line)
  assert re.fullmatch(
      rf'error: cannot write (checkpoint {stage}/6: {FULL}; its partial files were removed'
      rf'|metrics {workdir}/metrics.jsonl: {FULL}|TensorBoard events {workdir}/tensorboard: '
      rf'{FULL}); last intact checkpoint: {stage}/4 \(stage vae, step 4\); free space and run '
      'the same command to resume', line), line
  assert sorted(os.listdir(stage)) == ['4']  # nothing half-written beside it
  # Step 4 is intact: it restores (checksums checked), so the same command resumes from it
  # (resuming itself: test_reliability.py::test_train_mode_resumes_from_the_newest_...).
  config = config_lib.load_config(str(workdir))
  ckpt = checkpointing.StageCheckpointer(str(workdir), 'vae', read_only=True)
  params = checkpointing.abstract_params(config, 'vae')
  state, step = ckpt.restore_latest({'params': params, 'ema_params': params}, params_only=True)
  ckpt.close()
  assert step == 4 and int(state['step']) == 4


# ---------------------------------------------------------------------------- simulated
def _tiny_state():
  return {'w': np.arange(6, dtype=np.float32).reshape(2, 3)}


def test_a_failed_checkpoint_write_names_the_step_and_removes_its_partial_folder(tmp_path):
  ckpt = checkpointing.StageCheckpointer(str(tmp_path), 'vae', keep=2)
  ckpt.save(1, _tiny_state(), force=True)
  ckpt.wait()
  stage = tmp_path / 'checkpoints' / 'vae'

  def full_disk(step, **kwargs):  # Orbax's failure: a partial folder and a ValueError
    (stage / f'{step}.orbax-checkpoint-tmp-1234' / 'default').mkdir(parents=True)
    raise ValueError(ENOSPC_TEXT)

  real_save, ckpt.manager.save = ckpt.manager.save, full_disk
  with pytest.raises(checkpointing.CheckpointWriteError) as caught:
    ckpt.save(2, _tiny_state(), force=True)
  ckpt.manager.save = real_save
  ckpt.close()
  assert isinstance(caught.value, errors.UserError) and isinstance(caught.value, OSError)
  assert str(caught.value) == (f'cannot write checkpoint {stage}/2: {FULL}; its partial files '
                               'were removed')
  assert sorted(os.listdir(stage)) == ['1']
  assert train_mode.last_intact_checkpoint(str(tmp_path), ['vae', 'reverse']) == (
      f'{stage}/1 (stage vae, step 1)')
  assert train_mode.last_intact_checkpoint(str(tmp_path / 'x'), ['vae']).startswith('none')


def test_the_message_names_the_first_failed_write_with_resume_advice(tmp_path):
  first = checkpointing.CheckpointWriteError('/w/checkpoints/vae/6', FULL, 'checkpoint',
                                             'its partial files were removed')
  try:
    try:
      raise first
    finally:  # closing the metrics file on the way out fails too
      raise errors.WriteError('/w/metrics.jsonl', FULL, 'metrics')
  except errors.WriteError as err:
    last = err
  assert train_mode._first_write_failure(last) is first
  message = str(train_mode._with_resume_advice(first, str(tmp_path), ['vae']))
  assert message == (f'cannot write checkpoint /w/checkpoints/vae/6: {FULL}; its partial files '
                     'were removed; last intact checkpoint: none (no checkpoint was written '
                     'yet); free space and run the same command to resume')


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_metrics_and_image_grid_writes_to_a_full_disk(tmp_path):
  (tmp_path / 'metrics.jsonl').symlink_to('/dev/full')  # every write: ENOSPC
  writer = metric_writer.MetricWriter(str(tmp_path), enabled=True)
  with pytest.raises(errors.WriteError,
                     match=f'^cannot write metrics {tmp_path}/metrics.jsonl: {FULL}$'):
    writer.write('vae', 2, {'loss': 0.5})
  grid = tmp_path / 'samples' / 'g.png'
  grid.parent.mkdir()
  grid.symlink_to('/dev/full')
  with pytest.raises(errors.WriteError, match=f'^cannot write image grid {grid}: {FULL}$'):
    image_grid.save_grid(str(grid), np.zeros((4, 8, 8, 1), np.uint8))


def test_a_failed_tensorboard_write_is_raised_not_a_hang(tmp_path, monkeypatch):
  """tensorboardX writes in a thread; when it dies of a full disk, its queue would block
  add_scalar forever: the next write raises instead (and the thread prints no traceback)."""
  from tensorboardX import event_file_writer  # pylint: disable=g-import-not-at-top
  writer = metric_writer.MetricWriter(str(tmp_path), enabled=True)
  hooks = []
  monkeypatch.setattr(threading, 'excepthook', threading.excepthook)  # restored afterwards
  monkeypatch.setattr(metric_writer, '_previous_hook', hooks.append)

  def full_disk(self, data):
    raise OSError(28, FULL)

  monkeypatch.setattr(event_file_writer.EventsWriter, 'write_event', full_disk)
  writer.write('vae', 2, {'loss': 0.5, 'grad_norm': float('nan')})
  writer._tb_threads[0].join(timeout=30)
  with pytest.raises(errors.WriteError,
                     match=f"^cannot write TensorBoard events {tmp_path / 'tensorboard'}: "):
    writer.write('vae', 4, {'loss': 0.4})
  assert not hooks  # the thread's write failure printed nothing
  assert (tmp_path / 'metrics.jsonl').read_text().count('\n') == 1
  assert '"grad_norm": "nan"' in (tmp_path / 'metrics.jsonl').read_text()
  assert pathlib.Path(tmp_path / 'tensorboard').is_dir()


def _asyncio_echo_of_a_full_disk() -> None:
  """What asyncio logs when an abandoned Orbax write task is garbage-collected."""
  err = ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device [os_error_code='28']")
  logging.getLogger('asyncio').error('Task exception was never retrieved', exc_info=(
      type(err), err, None))


def test_asyncio_echoes_of_a_reported_write_failure_are_not_printed(caplog):
  caplog.set_level(logging.ERROR, logger='asyncio')
  with pytest.raises(OSError):
    with train_mode._background_write_failures_reported_once():
      _asyncio_echo_of_a_full_disk()
      raise OSError(28, 'No space left on device')
  _asyncio_echo_of_a_full_disk()  # after the failure was reported: still one line
  assert not [r for r in caplog.records if r.name == 'asyncio']
  for f in logging.getLogger('asyncio').filters[:]:  # this process goes on after the test
    if isinstance(f, train_mode._HeldWriteFailures):
      logging.getLogger('asyncio').removeFilter(f)


def test_asyncio_echoes_are_printed_when_the_run_does_not_end_with_a_write_failure(caplog):
  caplog.set_level(logging.ERROR, logger='asyncio')
  with train_mode._background_write_failures_reported_once():
    _asyncio_echo_of_a_full_disk()
    assert not caplog.records  # held while the run goes on
  assert [r.getMessage() for r in caplog.records] == ['Task exception was never retrieved']
  assert not [f for f in logging.getLogger('asyncio').filters
              if isinstance(f, train_mode._HeldWriteFailures)]
