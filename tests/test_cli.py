"""main.py end to end on real Fashion-MNIST (configs/smoke.py): train, resume, sample, errors."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FMNIST = pathlib.Path('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz')
needs_fmnist = pytest.mark.skipif(not FMNIST.exists(),
                                  reason='apt-get install dataset-fashion-mnist')


def _main(*args, env=None, timeout=600):
  env = dict(os.environ if env is None else env)
  # One CPU device (the user's default); the compilation cache shared with the test session.
  env.pop('XLA_FLAGS', None)
  cache = os.environ.get('PIXDIFF_JAX_CACHE', str(ROOT / '.jax_cache'))
  return subprocess.run([sys.executable, str(ROOT / 'main.py'), f'--compilation_cache={cache}',
                         *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


@needs_fmnist
def test_smoke_trains_resumes_and_samples(tmp_path):
  workdir = tmp_path / 'w'
  cfg = ['--config', 'configs/smoke.py', '--workdir', str(workdir)]
  run = _main(*cfg)
  assert run.returncode == 0, run.stderr[-3000:]
  for stage in ('vae', 'reverse'):
    assert sorted(os.listdir(workdir / 'checkpoints' / stage)) == ['4', '6']
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert {r['stage'] for r in records} == {'vae', 'reverse'}
  assert all(np.isfinite(r['loss']) for r in records)
  assert (workdir / 'samples' / 'reverse_step0000006.png').exists()

  # The same command again: both stages are finished, nothing is trained or logged.
  rerun = _main(*cfg)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert (workdir / 'metrics.jsonl').read_text().splitlines() == lines

  sample = _main(*cfg, '--mode', 'sample', '--num_samples', '12', '--sample_name', 'grid')
  assert sample.returncode == 0, sample.stderr[-3000:]
  summary = json.loads(sample.stdout)
  assert summary['network_evals'] == 2
  with np.load(workdir / 'samples' / 'grid.npz') as f:
    images = f['images']
  assert images.shape == (12, 32, 32, 1) and images.dtype == np.uint8
  assert images.std() > 0  # not a constant image
  assert (workdir / 'samples' / 'grid.png').exists()
  # The smoke config's preset ('consistent') decides the settings it names.
  assert {k: summary['settings'][k] for k in ('preset', 'update', 'eta', 'prior')} == {
      'preset': 'consistent', 'update': 'x0_jump', 'eta': 0.0, 'prior': 'scale'}
  # A preset given on the command line wins over the config's fields (as for training).
  paper = _main(*cfg, '--mode', 'sample', '--num_samples', '2', '--sample_name', 'paper',
                '--config.sampling.preset=paper')
  assert paper.returncode == 0, paper.stderr[-3000:]
  st = json.loads(paper.stdout)['settings']
  assert (st['preset'], st['network_calls'], st['eta'], st['clip_denoised'], st['prior'],
          st['update']) == ('paper', 1, 1.0, False, 'standard', 'recursion')


@pytest.mark.parametrize('override, message', [
    (['--config.data.dataset=cifar_ten'], 'data.dataset'),
    (['--config.data.dataset=mnist', '--config.data.path=/nonexistent/mnist'], 'mnist'),
    (['--config.training.batch_size=3'], 'training.batch_size'),
    (['--config.model.ch_mult=(1,1,1,1,1,1,1)'], 'data.image_size'),
])
def test_config_errors_are_one_clear_line(tmp_path, override, message):
  env = dict(os.environ)
  run_env = dict(env)
  args = ['--config', 'configs/smoke.py', '--workdir', str(tmp_path / 'w'), *override]
  if 'batch_size=3' in override[0]:
    # Two host devices: 3 images cannot be split over them.
    run_env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
    run = subprocess.run([sys.executable, str(ROOT / 'main.py'), *args], cwd=ROOT, env=run_env,
                         capture_output=True, text=True, timeout=300)
  else:
    run = _main(*args)
  assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
  err = [line for line in run.stderr.splitlines() if line.startswith('error:')]
  assert len(err) == 1 and message in err[0], run.stderr[-2000:]
  assert 'Traceback' not in run.stderr


def test_info_prints_parameter_counts():
  run = _main('--config', 'configs/smoke.py', '--mode', 'info')
  assert run.returncode == 0, run.stderr[-2000:]
  counts = json.loads(run.stdout)
  assert set(counts) == {'vae', 'reverse_model', 'total'}
  assert counts['total'] == counts['vae'] + counts['reverse_model'] > 0
