"""Test setup: 2 host CPU devices (for pmap tests) and JAX's persistent compilation cache.

Both must be set before JAX initialises its backends, which is why they live here. The fixture
``smoke_workdir`` trains ``configs/smoke.py`` once per test session (through ``main.py``, as a
user would); tests copy it (``smoke_copy``) before changing anything in it.
"""
import os
import pathlib
import shutil
import sys

import pytest

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=2'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('PIXDIFF_JAX_CACHE', str(ROOT / '.jax_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


@pytest.fixture(scope='session')
def smoke_trained(tmp_path_factory):
  """``(workdir, CompletedProcess)``: ``main.py --config configs/smoke.py --workdir W`` run once
  per session (both stages trained, checkpoints at steps 4 and 6) and its output."""
  import cli_testutil  # pylint: disable=g-import-not-at-top
  if not cli_testutil.FMNIST.exists():
    pytest.skip('apt-get install dataset-fashion-mnist')
  workdir = tmp_path_factory.mktemp('smoke') / 'w'
  run = cli_testutil.run_main('--config', 'configs/smoke.py', '--workdir', workdir)
  assert run.returncode == 0, run.stderr[-3000:]
  return workdir, run


@pytest.fixture(scope='session')
def smoke_workdir(smoke_trained):
  """The workdir of ``smoke_trained``; copy it (``smoke_copy``) before changing anything."""
  return smoke_trained[0]


@pytest.fixture
def smoke_copy(smoke_workdir, tmp_path):
  """A private copy of ``smoke_workdir``."""
  copy = tmp_path / 'w'
  shutil.copytree(smoke_workdir, copy)
  return copy
