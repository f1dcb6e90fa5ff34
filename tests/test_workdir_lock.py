"""The workdir lock: a second training (or eval) on a workdir in use ends at once with one line;
a lock left by a killed process is taken over with a notice. Two real processes each time: a
holder (``python -c``, the lock code that main.py uses) and ``main.py``."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cli_testutil import ROOT, error_lines, main_env, run_main
from pixdiff_jax.storage import workdir_lock

HOLD = ('import sys, time\n'
        'from pixdiff_jax.storage import workdir_lock\n'
        'workdir_lock.WorkdirLock(sys.argv[1], sys.argv[2]).acquire()\n'
        'print("held", flush=True)\n'
        'time.sleep(120)\n')


def _holder(workdir, purpose='train') -> subprocess.Popen:
  proc = subprocess.Popen([sys.executable, '-c', HOLD, str(workdir), purpose], cwd=ROOT,
                          env={**main_env(), 'PYTHONPATH': str(ROOT)}, stdout=subprocess.PIPE,
                          text=True)
  assert proc.stdout.readline().strip() == 'held'
  return proc


def test_a_second_training_ends_at_once_and_a_stale_lock_is_taken_over(smoke_copy):
  holder = _holder(smoke_copy)
  try:
    start = time.perf_counter()
    run = run_main('--workdir', smoke_copy, '--stage', 'vae', timeout=120)
    seconds = time.perf_counter() - start
    assert run.returncode == 2 and 'Traceback' not in run.stderr, run.stderr[-2000:]
    line, = error_lines(run.stderr)
    print(line, f'({seconds:.1f} s)')
    assert line.startswith(f'error: workdir {smoke_copy} is in use by process {holder.pid} '
                           '(started ')
    assert line.endswith('wait for it to end or use another --workdir')
    assert 'train vae' not in run.stderr  # nothing trained, nothing compiled
  finally:
    holder.kill()  # SIGKILL: the lock file still names it
    holder.wait()
  stale = json.loads((smoke_copy / 'train.lock').read_text())
  assert stale['pid'] == holder.pid
  run = run_main('--workdir', smoke_copy, '--stage', 'vae', timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  notice = f'notice: taking over the workdir lock {smoke_copy}/train.lock of process {holder.pid}'
  assert notice in run.stderr and 'which is no longer running' in run.stderr
  print([line for line in run.stderr.splitlines() if line.startswith('notice:')][0])
  assert not (smoke_copy / 'train.lock').exists()  # released: removed


def test_eval_takes_its_own_lock(smoke_copy):
  holder = _holder(smoke_copy, 'eval')
  try:
    run = run_main('--workdir', smoke_copy, '--mode', 'eval', timeout=120)
  finally:
    holder.send_signal(signal.SIGTERM)
    holder.wait()
  assert run.returncode == 2, run.stderr[-2000:]
  line, = error_lines(run.stderr)
  assert line.startswith(f'error: workdir {smoke_copy} is in use by process {holder.pid} ')
  assert not (smoke_copy / 'eval').exists()  # nothing written


def test_lock_in_one_process(tmp_path):
  """The same semantics without subprocesses: flock is per open file, so a second lock object
  in this process is refused too; release removes the file; hold() cleans up what it made."""
  first = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  with pytest.raises(workdir_lock.WorkdirInUseError, match=f'process {os.getpid()} '):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  first.release()
  assert not (tmp_path / 'train.lock').exists()
  (tmp_path / 'train.lock').write_text('{"pid": 99999999, "started": "yesterday"}\n')
  notes = []
  workdir_lock.WorkdirLock(str(tmp_path)).acquire(notes.append).release()
  assert notes == [f'notice: taking over the workdir lock {tmp_path}/train.lock of process '
                   '99999999 (started yesterday), which is no longer running']
  new = tmp_path / 'a' / 'b'
  with pytest.raises(RuntimeError):
    with workdir_lock.hold(str(new)):
      assert (new / 'train.lock').exists()
      raise RuntimeError('failed before writing anything')
  assert not (tmp_path / 'a').exists()
