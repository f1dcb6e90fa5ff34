"""Two processes of main.py (JAX multi-controller runtime, gloo on CPU) against one process with
two devices: same parameters, resume across layouts, same samples; bad launches end in one line.

Each subprocess gets its own XLA_FLAGS (1 CPU device per process of the 2-process job, 2 forced
host devices for the single process). The trained workdirs are shared by the tests of this module
(module-scoped fixtures), and independent runs go in pairs, in parallel.
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

import numpy as np
import pytest

from cli_testutil import FMNIST, main_cmd, xla_flags
from pixdiff_jax.utils import distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(),
                                  reason='apt-get install dataset-fashion-mnist')

# Smoke config, shortened (less to compile, same code paths): T=4 heads without residual
# blocks, 4 steps per stage, checkpoints at 2 and 4, no snapshot grids, no distill stage (a
# reverse stage resumed in another process layout is another teacher, which it would refuse).
SMOKE = ['--config', 'configs/smoke.py', '--config.diffusion.num_steps=4',
         '--config.model.head_num_res_blocks=0', '--config.distill.steps=0']
SHORT = SMOKE + ['--config.training.vae_steps=4', '--config.training.reverse_steps=4',
                 '--config.training.checkpoint_every=2', '--config.training.snapshot_every=0']
TIMEOUT = 1800


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=xla_flags(devices))
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
  return env


class Run:
  """A launched group of processes (1 with 2 devices, or 2 with 1 device each)."""

  def __init__(self, processes: int, *args, port: int | None = None, per_process=None):
    self.start = time.perf_counter()
    # Output goes to files, not pipes: a process blocked on a full pipe that nobody reads yet
    # would stall the collective the other process waits in.
    self._files = []
    if processes == 1:
      commands, env = [main_cmd(*args)], _env(2)
    else:
      port = port or _free_port()
      commands = [
          main_cmd(*args, *(per_process[i] if per_process else ()), '--distributed',
                   f'--coordinator=127.0.0.1:{port}', f'--num_processes={processes}',
                   f'--process_id={i}')
          for i in range(processes)]
      env = _env(1)
    self.procs = []
    for command in commands:
      out, err = tempfile.TemporaryFile('w+'), tempfile.TemporaryFile('w+')
      self._files.append((out, err))
      self.procs.append(subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=out,
                                         stderr=err))

  def wait(self, timeout: float = TIMEOUT):
    """``[(returncode, stdout, stderr)]`` per process; ``self.seconds`` the wall time."""
    out = []
    for p, files in zip(self.procs, self._files):
      try:
        p.wait(timeout=max(1.0, timeout - self.elapsed()))
      except subprocess.TimeoutExpired:
        for q in self.procs:
          q.kill()
        raise
      texts = []
      for f in files:
        f.seek(0)
        texts.append(f.read())
        f.close()
      out.append((p.returncode, *texts))
    self.seconds = self.elapsed()
    return out

  def elapsed(self):
    return time.perf_counter() - self.start


def _check_ok(results, what):
  for i, (code, _, stderr) in enumerate(results):
    assert code == 0, f'{what}, process {i}: exit {code}\n{stderr[-4000:]}'


def _params(workdir):
  """Final params and EMA params of both stages, restored in this (test) process."""
  from pixdiff_jax import sampling  # pylint: disable=g-import-not-at-top
  out = {}
  for use_ema in (False, True):
    _, variables = sampling.load_sampler(workdir, use_ema=use_ema)
    out['ema' if use_ema else 'params'] = variables
  return out


def _max_diff(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  diffs = jax.tree_util.tree_map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
      a, b)
  return max(jax.tree_util.tree_leaves(diffs))


def _assert_same_params(a, b, what):
  import jax  # pylint: disable=g-import-not-at-top
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b, what
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6, err_msg=what)


def _drop_last_reverse_checkpoint(src, dst):
  """Copy of workdir ``src`` whose reverse stage resumes at step 2 (step 4 removed)."""
  shutil.copytree(src, dst)
  shutil.rmtree(dst / 'checkpoints' / 'reverse' / '4')
  return dst


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """One process with 2 devices and two processes with 1 device each, trained side by side."""
  if not FMNIST.exists():
    pytest.skip('apt-get install dataset-fashion-mnist')
  base = tmp_path_factory.mktemp('distributed')
  one, two = base / 'one_process', base / 'two_processes'
  run_one = Run(1, *SHORT, '--workdir', str(one))
  run_two = Run(2, *SHORT, '--workdir', str(two))
  results_two, results_one = run_two.wait(), run_one.wait()
  _check_ok(results_one, 'one process, 2 devices')
  _check_ok(results_two, 'two processes')
  print(f'\ntraining (run side by side): one process {run_one.seconds:.1f} s, '
        f'two processes {run_two.seconds:.1f} s')
  return {'base': base, 'one': one, 'two': two, 'results_two': results_two}


@needs_fmnist
def test_two_processes_train_like_one_process_with_two_devices(trained):
  one, two = trained['one'], trained['two']
  for stage in ('vae', 'reverse'):
    assert sorted(os.listdir(two / 'checkpoints' / stage)) == ['2', '4']
  p_one, p_two = _params(one), _params(two)
  print(f'\nmax |params(2 processes) - params(1 process, 2 devices)| = '
        f'{_max_diff(p_one, p_two):.3g}')
  _assert_same_params(p_one, p_two, 'two processes vs one process with 2 devices')
  # Only process 0 writes metrics; every logged step appears once.
  records = [json.loads(line) for line in (two / 'metrics.jsonl').read_text().splitlines()]
  steps = [(r['stage'], r['step']) for r in records]
  assert steps == sorted(set(steps), key=steps.index) and ('reverse', 4) in steps
  # Process 1 logs no INFO lines and draws no progress bar.
  _, _, stderr1 = trained['results_two'][1]
  assert 'train vae' not in stderr1 and 'training finished' not in stderr1


@needs_fmnist
def test_resume_across_process_layouts(trained):
  base, one, two = trained['base'], trained['one'], trained['two']
  # Trained by two processes, resumed (reverse stage from step 2) by one process; and back.
  to_one = _drop_last_reverse_checkpoint(two, base / 'two_then_one')
  to_two = _drop_last_reverse_checkpoint(one, base / 'one_then_two')
  run_to_one = Run(1, *SHORT, '--workdir', str(to_one))
  run_to_two = Run(2, *SHORT, '--workdir', str(to_two))
  results_to_two, results_to_one = run_to_two.wait(), run_to_one.wait()
  _check_ok(results_to_one, '2 processes -> 1 process')
  _check_ok(results_to_two, '1 process -> 2 processes')
  assert sorted(os.listdir(to_one / 'checkpoints' / 'reverse')) == ['2', '4']
  reference = _params(one)
  _assert_same_params(reference, _params(to_one), 'resumed 2 processes -> 1 process')
  _assert_same_params(reference, _params(to_two), 'resumed 1 process -> 2 processes')


@needs_fmnist
def test_distributed_sampling_writes_the_single_process_images(trained):
  two = trained['two']
  # 20 images in batches of 8: 3 batches, two for process 0 and one for process 1.
  sample = [*SMOKE, '--workdir', str(two), '--mode', 'sample', '--num_samples', '20']
  run_two = Run(2, *sample, '--sample_name', 'two')
  run_one = Run(1, *sample, '--sample_name', 'one')
  results_two, results_one = run_two.wait(), run_one.wait()
  _check_ok(results_one, 'sampling, one process')
  _check_ok(results_two, 'sampling, two processes')
  # gloo's C++ library prints '[Gloo] Rank i is connected ...' on stdout; the rest is ours.
  ours = [''.join(line for line in out.splitlines(True) if not line.startswith('[Gloo]'))
          for _, out, _ in results_two]
  assert json.loads(ours[0])['num_samples'] == 20
  assert ours[1].strip() == ''  # only process 0 reports (and writes)
  with np.load(two / 'samples' / 'one.npz') as f:
    images_one = f['images']
  with np.load(two / 'samples' / 'two.npz') as f:
    images_two = f['images']
  assert images_one.shape == (20, 32, 32, 1) and images_one.std() > 0
  np.testing.assert_array_equal(images_two, images_one)
  assert (two / 'samples' / 'two.png').exists()


@needs_fmnist
def test_a_failing_process_ends_the_other_with_its_message(tmp_path):
  # Process 1's data are missing; process 0 has read its shard and waits for process 1.
  run = Run(2, *SHORT, '--workdir', str(tmp_path / 'w'),
            per_process=[[], ['--config.data.dataset=mnist', '--config.data.path=/nonexistent']])
  (code0, _, err0), (code1, _, err1) = run.wait(timeout=300)
  last0, last1 = err0.strip().splitlines()[-1], err1.strip().splitlines()[-1]
  assert code1 == 2 and last1.startswith('error: ') and 'mnist' in last1, err1[-3000:]
  assert code0 == 2 and last0.startswith('error: process 1 failed: '), err0[-3000:]
  assert last0.endswith(last1[len('error: '):])


def _one_line_error(run, timeout=90):
  results = run.wait(timeout=timeout)
  return [(code, stderr.strip().splitlines()[-1] if stderr.strip() else '')
          for code, _, stderr in results]


def test_bad_launches_end_in_one_line_within_the_timeout(tmp_path):
  cfg = ['--config', 'configs/smoke.py', '--workdir', str(tmp_path / 'w')]
  # A port in use: process 0 cannot run the coordinator there.
  with socket.socket() as taken:
    taken.bind(('0.0.0.0', 0))
    taken.listen()
    port = taken.getsockname()[1]
    busy = Run(1, *cfg, '--distributed', f'--coordinator=127.0.0.1:{port}',
               '--num_processes=2', '--process_id=0')
    [(code, line)] = _one_line_error(busy)
  assert code == 2 and line.startswith('error: port') and 'in use' in line, line
  # A process id outside [0, num_processes).
  bad_id = Run(1, *cfg, '--distributed', f'--coordinator=127.0.0.1:{_free_port()}',
               '--num_processes=2', '--process_id=2')
  [(code, line)] = _one_line_error(bad_id)
  assert code == 2 and line.startswith('error: --process_id must be in [0, 2)'), line
  # Nobody at the coordinator's address: the watchdog's line after --distributed_timeout.
  lonely = Run(1, *cfg, '--distributed', f'--coordinator=127.0.0.1:{_free_port()}',
               '--num_processes=2', '--process_id=1', '--distributed_timeout=5')
  [(code, line)] = _one_line_error(lonely)
  assert code == 2 and 'did not complete within 5 s' in line, line
  assert lonely.seconds < 60


def test_gather_items_single_process_keeps_order():
  local = np.arange(12).reshape(3, 4)
  assert distributed.my_items(3) == [0, 1, 2]
  np.testing.assert_array_equal(distributed.gather_items(local, 3), local)


@pytest.mark.parametrize('address', ['localhost', 'host:', ':123', 'host:0', 'host:99999'])
def test_bad_coordinator_address(address):
  with pytest.raises(distributed.DistributedError, match='HOST:PORT'):
    distributed.parse_address(address)
