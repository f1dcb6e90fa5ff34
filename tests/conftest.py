"""Test setup: 2 host CPU devices (for pmap tests) and JAX's persistent compilation cache.

Both must be set before JAX initialises its backends, which is why they live here. The fixture
``smoke_workdir`` trains ``configs/smoke.py`` once per test run (through ``main.py``, as a
user would; one run shared by the pytest-xdist workers); tests copy it (``smoke_copy``) before
changing anything in it.
"""
import os
import pathlib
import shutil
import sys

import pytest

from cli_testutil import SUITE_XLA_FLAGS  # noqa: E402  (no JAX import)

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=2'
if SUITE_XLA_FLAGS not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' ' + SUITE_XLA_FLAGS
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from pixdiff_jax.utils import xla_cache  # noqa: E402

# The cache main.py uses (tests/cli_testutil.py passes the same directory to its subprocesses).
xla_cache.use(os.environ.get('PIXDIFF_JAX_CACHE', str(ROOT / '.jax_cache')))
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


@pytest.fixture(scope='session')
def smoke_trained(tmp_path_factory):
  """``(workdir, CompletedProcess)``: ``main.py --config configs/smoke.py --workdir W`` run once
  per test run (every stage trained, checkpoints at steps 4 and 6) and its output.

  Under pytest-xdist the workers share one run: the first to get here trains, under a file
  lock, and records the output; the others wait for the lock and read it. Treat the workdir as
  read-only (``smoke_copy`` gives a private copy).
  """
  import fcntl  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import cli_testutil  # pylint: disable=g-import-not-at-top
  if not cli_testutil.FMNIST.exists():
    pytest.skip('apt-get install dataset-fashion-mnist')
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the directory every worker's base temp lives in
  base = root / 'smoke_shared'
  base.mkdir(exist_ok=True)
  workdir, record = base / 'w', base / 'run.json'
  with open(base / 'lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not record.exists():
      run = cli_testutil.run_main('--config', 'configs/smoke.py', '--workdir', workdir)
      record.write_text(json.dumps({'args': run.args, 'returncode': run.returncode,
                                    'stdout': run.stdout, 'stderr': run.stderr}))
  saved = json.loads(record.read_text())
  run = subprocess.CompletedProcess(saved['args'], saved['returncode'], saved['stdout'],
                                    saved['stderr'])
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


# pytest-xdist (`-n 2 --dist loadfile`) hands the files to the workers in the collection order
# below, heaviest first (each file goes to whichever worker asks next, so the two finish close
# together; by default it sorts the files by their number of tests, which put the one-test
# 70-second gpu_e2e file last). test_train.py comes before test_distributed.py: the worker
# that runs test_train.py takes test_distributed.py next, and its one-process reference run
# reads the programs test_train.py compiled (the same shortened smoke config on 2 devices).
# Seconds and measurements: docs/performance.md, "The test suite's time".
_FIRST = ['test_train.py', 'test_reliability.py', 'test_distributed.py', 'test_cli.py',
          'test_heads_on_demand.py', 'test_gpu_e2e.py', 'test_evaluation.py',
          'test_memory_plan.py', 'test_models.py', 'test_distill.py', 'test_losses.py',
          'test_samplers.py', 'test_metrics_features.py', 'test_sample_chunks.py']


def pytest_configure(config):
  if hasattr(config.option, 'loadscopereorder'):  # pytest-xdist: keep the order below
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
