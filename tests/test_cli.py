"""main.py end to end on real Fashion-MNIST (configs/smoke.py): train, resume, sample, errors."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cli_testutil import main_env, run_main, xla_flags
from pixdiff_jax.utils import xla_cache

ROOT = pathlib.Path(__file__).resolve().parents[1]
FMNIST = pathlib.Path('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz')


def _main(*args, env=None, timeout=600):
  # One CPU device (the user's default); the compilation cache shared with the test session.
  return run_main(*args, env=env, timeout=timeout)


@pytest.fixture(scope='module')
def smoke_run(smoke_trained, tmp_path_factory):
  """The session's run of the README's command on configs/smoke.py (conftest.py): a copy of
  its workdir for this module's tests to continue in (rerun, sample), the run's own workdir
  (named in its output) and main.py's output."""
  trained, run = smoke_trained
  workdir = tmp_path_factory.mktemp('cli') / 'w'
  shutil.copytree(trained, workdir)
  return workdir, trained, run


def test_smoke_trains_resumes_and_samples(smoke_run):
  workdir, trained, run = smoke_run
  for stage in ('vae', 'reverse'):
    assert sorted(os.listdir(workdir / 'checkpoints' / stage)) == ['4', '6']
  assert sorted(os.listdir(workdir / 'checkpoints' / 'distill')) == ['4']
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert {r['stage'] for r in records} == {'vae', 'reverse', 'distill'}
  assert all(np.isfinite(r['loss']) for r in records)
  for stage, step in (('vae', 6), ('reverse', 6), ('distill', 4)):  # final snapshot grids
    assert (workdir / 'samples' / f'{stage}_step{step:07d}.png').exists()
  # The end of training names what was written (stderr; not a terminal here, so no bar).
  assert f'checkpoints   {trained}/checkpoints/reverse/6  (stage reverse, step 6)' in run.stderr
  assert f'checkpoints   {trained}/checkpoints/distill/4  (stage distill, step 4)' in run.stderr
  assert f'metrics.jsonl {trained}/metrics.jsonl' in run.stderr
  assert 'newest distill_step0000004.png' in run.stderr
  assert f'tensorboard   tensorboard --logdir {trained}/tensorboard' in run.stderr
  assert '\r' not in run.stderr
  assert 'train reverse: 6/6 (100%)' in run.stderr
  assert "Unable to initialize backend 'tpu'" not in run.stderr

  # Again, with --workdir alone: the stored config is used (the default configs/fashion_mnist.py
  # describes other networks and would be refused); both stages are finished, nothing is
  # trained or logged.
  rerun = _main('--workdir', str(workdir))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert (workdir / 'metrics.jsonl').read_text().splitlines() == lines

  # Sample mode with --workdir alone reads the stored config, sampler settings included.
  sample = _main('--workdir', str(workdir), '--mode', 'sample', '--num_samples', '12',
                 '--sample_name', 'grid')
  assert sample.returncode == 0, sample.stderr[-3000:]
  summary = json.loads(sample.stdout)
  assert summary['network_evals'] == 2
  with np.load(workdir / 'samples' / 'grid.npz') as f:
    images = f['images']
  assert images.shape == (12, 32, 32, 1) and images.dtype == np.uint8
  assert images.std() > 0  # not a constant image
  assert (workdir / 'samples' / 'grid.png').exists()
  assert f'images  {workdir}/samples/grid.npz' in sample.stderr
  # The smoke config's preset ('consistent') decides the settings it names.
  assert {k: summary['settings'][k] for k in ('preset', 'update', 'eta', 'prior')} == {
      'preset': 'consistent', 'update': 'x0_jump', 'eta': 0.0, 'prior': 'scale'}
  # The same images when --config names the config the workdir was trained with.
  again = _main('--config', 'configs/smoke.py', '--workdir', str(workdir), '--mode', 'sample',
                '--num_samples', '12', '--sample_name', 'grid_again')
  assert again.returncode == 0, again.stderr[-3000:]
  with np.load(workdir / 'samples' / 'grid_again.npz') as f:
    np.testing.assert_array_equal(f['images'], images)
  # A preset given on the command line wins over the config's fields (as for training), also
  # as an override of the stored config without --config.
  paper = _main('--workdir', str(workdir), '--mode', 'sample', '--num_samples', '2',
                '--sample_name', 'paper', '--config.sampling.preset=paper')
  assert paper.returncode == 0, paper.stderr[-3000:]
  st = json.loads(paper.stdout)['settings']
  assert (st['preset'], st['network_calls'], st['eta'], st['clip_denoised'], st['prior'],
          st['update']) == ('paper', 1, 1.0, False, 'standard', 'recursion')
  # The distilled preset samples with the distill stage's student: one network call.
  one = _main('--workdir', str(workdir), '--mode', 'sample', '--num_samples', '2',
              '--config.sampling.preset=distilled')
  assert one.returncode == 0, one.stderr[-3000:]
  summary = json.loads(one.stdout)
  assert summary['network_evals'] == 1
  assert summary['checkpoint_steps'] == {'vae': 6, 'distill': 4}
  assert summary['npz'].endswith('pixel_aware_distilled_K1_eta0_x0_steps.npz')
  bad = _main('--workdir', str(workdir), '--mode', 'sample', '--config.sampling.no_such=1')
  assert bad.returncode == 2 and 'Traceback' not in bad.stderr, bad.stderr[-2000:]
  bad_lines = [line for line in bad.stderr.splitlines() if line.startswith('error:')]
  assert len(bad_lines) == 1 and bad_lines[0].startswith(
      "error: unknown config field 'sampling.no_such' in --config.sampling.no_such=1; "), bad_lines


def test_example_sample_from_jax(smoke_workdir):
  """examples/sample_from_jax.py: load_sampler, jit, vmap over keys, use inside another jit."""
  workdir = smoke_workdir  # read only: the shared run
  env = main_env()
  env['PYTHONPATH'] = str(ROOT)
  # The test session's persistent compilation cache (the example itself sets none).
  env['JAX_COMPILATION_CACHE_DIR'] = os.environ.get('PIXDIFF_JAX_CACHE', str(ROOT / '.jax_cache'))
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = str(xla_cache.MIN_COMPILE_SECS)
  run = subprocess.run([sys.executable, str(ROOT / 'examples' / 'sample_from_jax.py'),
                        '--workdir', str(workdir), '--batch_size', '3', '--num_keys', '2'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout)
  assert out['image_shape'] == [3, 32, 32, 1] and out['vmapped_shape'] == [2, 3, 32, 32, 1]
  assert 0.0 <= out['min'] <= out['max'] <= 1.0
  assert out['network_evals_per_call'] == 2
  # vmap over keys gives what the single jitted call gives for the same key.
  assert out['max_abs_diff_vmap_vs_jit'] < 1e-3
  # The statistics computed inside the fused jitted program match the host's.
  assert abs(out['mean_brightness'] - out['mean_brightness_host']) < 1e-5
  assert out['diversity'] > 0
  # The workdir has a distill stage: the distilled presets jit, vmap and fuse the same way.
  assert list(out['presets']) == ['config', 'distilled', 'distilled_K2']
  for preset, calls in (('distilled', 1), ('distilled_K2', 2)):
    got = out['presets'][preset]
    assert got['network_evals_per_call'] == calls and got['vmapped_shape'] == [2, 3, 32, 32, 1]
    assert got['max_abs_diff_vmap_vs_jit'] < 1e-3
    assert abs(got['mean_brightness'] - got['mean_brightness_host']) < 1e-5


def test_defaults_are_the_main_job(tmp_path):
  """No --config / --workdir: configs/fashion_mnist.py into runs/fmnist (of the working dir)."""
  info = _main('--mode', 'info', '--nomemory_plan')  # (tests/test_memory_plan.py: the plan)
  assert info.returncode == 0, info.stderr[-2000:]
  assert json.loads(info.stdout)['vae'] == 295_569  # configs/fashion_mnist.py (README)
  # Train mode, stopped early by a missing dataset: the workdir would be ./runs/fmnist, but a run
  # that fails before training leaves nothing behind (not even the folder).
  run = subprocess.run([sys.executable, str(ROOT / 'main.py'), '--compilation_cache=',
                        '--config.data.path=/nonexistent/fmnist'], cwd=tmp_path,
                       env=main_env(),
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 2 and 'error: fashion_mnist' in run.stderr, run.stderr[-2000:]
  assert '/nonexistent/fmnist' in run.stderr
  assert not (tmp_path / 'runs').exists()
  help_text = _main('--help')
  for mode in ('train', 'sample', 'info'):
    assert f'  {mode} ' in help_text.stdout
  assert 'python main.py --mode sample --workdir runs/fmnist' in help_text.stdout


@pytest.mark.parametrize('override, message', [
    (['--config.data.dataset=cifar_ten'], 'data.dataset'),
    (['--config.data.dataset=mnist', '--config.data.path=/nonexistent/mnist'], 'mnist'),
    (['--config.training.batch_size=3'], 'training.batch_size'),
    (['--config.model.ch_mult=(1,1,1,1,1,1,1)'], 'data.image_size'),
    (['--config.training.no_such_field=1'], 'no_such_field'),
])
def test_config_errors_are_one_clear_line(tmp_path, override, message):
  env = dict(os.environ)
  run_env = dict(env)
  args = ['--config', 'configs/smoke.py', '--workdir', str(tmp_path / 'w'), *override]
  if 'batch_size=3' in override[0]:
    # Two host devices: 3 images cannot be split over them.
    run_env['XLA_FLAGS'] = xla_flags(2)
    run = subprocess.run([sys.executable, str(ROOT / 'main.py'), *args], cwd=ROOT, env=run_env,
                         capture_output=True, text=True, timeout=300)
  else:
    run = _main(*args)
  assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
  err = [line for line in run.stderr.splitlines() if line.startswith('error:')]
  assert len(err) == 1 and message in err[0], run.stderr[-2000:]
  assert 'Traceback' not in run.stderr


def test_info_prints_parameter_counts():
  # --nomemory_plan: counts only (the compiled plans: tests/test_memory_plan.py).
  run = _main('--config', 'configs/smoke.py', '--mode', 'info', '--nomemory_plan')
  assert run.returncode == 0, run.stderr[-2000:]
  counts = json.loads(run.stdout)
  assert set(counts) == {'vae', 'reverse_model', 'total'}
  assert counts['total'] == counts['vae'] + counts['reverse_model'] > 0
