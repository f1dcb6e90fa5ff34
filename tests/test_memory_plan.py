"""training.memory: XLA's memory plan per stage (``--mode info``), the README's per-card promise
for the paper configs, and the one-line error of a step that cannot fit the device."""
import json
import pathlib
import re
import subprocess

import jax
import jax.numpy as jnp
import pytest

from cli_testutil import FMNIST, error_lines, main_cmd, main_env, run_main
from pixdiff_jax import config as config_lib
from pixdiff_jax.training import memory

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIB = 2.0 ** 30
# What a card of each size lets JAX use (README, GPU section): its memory in GiB (the smallest
# cards of the size: 79.6 GiB H100 80GB, 39.4 GiB A100 40GB, 22.5 GiB L4 / A10) times JAX's
# default preallocation of 75%, or the fraction the README's override sets.
CARD_GIB = {80: 79.6, 40: 39.4, 24: 22.5}
DEFAULT_FRACTION = 0.75


def _smoke(**training):
  config = config_lib.load_config_file(str(ROOT / 'configs' / 'smoke.py'))
  for k, v in training.items():
    config.training[k] = v
  return config


# ---------------------------------------------------------------------------- the fit check
def _toy_step():
  """A jitted ``(state, block, key, aux) -> (state, metrics)`` with a few MiB of buffers."""
  return jax.jit(lambda s, b, k, a: (s + jnp.sum(jnp.tanh(b @ b.T)), {'loss': jnp.mean(b)}))


def _toy_args():
  return jnp.zeros(()), jnp.ones((1024, 512), jnp.float32), jax.random.PRNGKey(0), None


def test_a_step_that_does_not_fit_is_one_line_naming_the_fields():
  config = _smoke(memory_limit_gib=0.001)  # 1.0 MiB: the toy step needs 2 MiB
  config.diffusion.heads_per_example = 0
  step = memory.FitCheckedStep(_toy_step(), config, 'reverse')
  with pytest.raises(memory.DoesNotFitError) as err:
    step(*_toy_args())
  msg = str(err.value)
  assert '\n' not in msg and isinstance(err.value, ValueError)  # main.py: one `error:` line
  assert msg.startswith('stage reverse does not fit: its train step needs ')
  assert 'more than the 1.0 MiB of training.memory_limit_gib=0.001; lower ' in msg
  for field in ('training.batch_size (now 8 over', 'diffusion.heads_per_example=2 (now 0, all',
                'model.dtype=bfloat16'):
    assert field in msg, (field, msg)
  # The VAE stage names its own fields only.
  with pytest.raises(memory.DoesNotFitError, match='vae.dtype=bfloat16') as err:
    memory.FitCheckedStep(_toy_step(), config, 'vae')(*_toy_args())
  assert 'heads_per_example' not in str(err.value)
  # Within the limit it runs, and compiles once per block shape.
  config.training.memory_limit_gib = 1.0
  step = memory.FitCheckedStep(_toy_step(), config, 'reverse')
  state, metrics = step(*_toy_args())
  step(state, *_toy_args()[1:])
  assert len(step.plans) == 1 and 2 * 2 ** 20 <= step.plans[0].total_bytes < GIB
  assert float(metrics['loss']) == 1.0


def test_out_of_memory_while_running_becomes_the_same_line():
  class _Compiled:
    def __call__(self, *args):
      raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 95.1GiB.')

    def memory_analysis(self):
      return _toy_step().lower(*_toy_args()).compile().memory_analysis()

  class _Step:
    def lower(self, *args):
      return type('L', (), {'compile': lambda self: _Compiled()})()

  with pytest.raises(memory.DoesNotFitError) as err:
    memory.FitCheckedStep(_Step(), _smoke(memory_limit_gib=1.0), 'vae')(*_toy_args())
  msg = str(err.value)
  assert msg.startswith('stage vae ran out of device memory (XLA planned ')
  assert 'allocate 95.1GiB' in msg and 'training.batch_size' in msg and '\n' not in msg


def test_device_memory_and_its_override():
  assert memory.device_memory_bytes(_smoke(memory_limit_gib=24.0)) == (
      int(24 * GIB), 'training.memory_limit_gib=24')
  limit, what = memory.device_memory_bytes(_smoke())
  # On the CPU: the host's memory shared by the local devices (2 in the test session).
  assert what.startswith('host memory') and 0 < limit * jax.local_device_count() < 2 ** 44
  with pytest.raises(ValueError, match='training.memory_limit_gib must be >= 0'):
    config_lib.validate_config(_smoke(memory_limit_gib=-1.0))


@pytest.mark.skipif(not FMNIST.exists(), reason='apt-get install dataset-fashion-mnist')
def test_training_that_cannot_fit_ends_in_one_error_line(tmp_path):
  run = run_main('--config', 'configs/smoke.py', '--workdir', tmp_path / 'w',
                 '--config.training.memory_limit_gib=0.001')
  assert run.returncode == 2, run.stderr[-2000:]
  err = error_lines(run.stderr)
  assert len(err) == 1 and 'Traceback' not in run.stderr, run.stderr[-2000:]
  assert err[0].startswith('error: stage vae does not fit: its train step needs ')
  assert 'training.batch_size (now 8 over 1 device(s)' in err[0]
  assert not (tmp_path / 'w' / 'checkpoints' / 'vae').exists() or not any(
      (tmp_path / 'w' / 'checkpoints' / 'vae').iterdir())


# ---------------------------------------------------------------------------- paper configs
def _readme_memory_rows():
  """``{(config, stage): (stated GiB, [(card GB, fraction)])}`` from the README's GPU table."""
  readme = (ROOT / 'README.md').read_text()
  rows = {}
  for name, stage, gib, cards in re.findall(
      r'^\| `configs/(\w+)\.py` \| (\w+) \| ([\d.]+) \| (.+?) \|$', readme, re.M):
    claims = []
    for part in cards.split(';'):
      fraction = re.search(r'XLA_PYTHON_CLIENT_MEM_FRACTION=([\d.]+)', part)
      for size in re.findall(r'\b(24|40|80) GB', part):
        claims.append((int(size), float(fraction.group(1)) if fraction else DEFAULT_FRACTION))
    rows[(name, stage)] = (float(gib), claims)
  return rows


def test_paper_config_plans_keep_the_readme_promise():
  """``main.py --config configs/NAME.py --mode info`` for both paper configs (one CPU device, as
  a user runs it; the two processes side by side): each stage's plan is the README's number
  (+-3%) and fits every card size the README names for it."""
  procs = {name: subprocess.Popen(main_cmd('--config', f'configs/{name}.py', '--mode', 'info'),
                                  cwd=ROOT, env=main_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
           for name in ('cifar10', 'celeba')}
  rows = _readme_memory_rows()
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-2000:]
    info = json.loads(out)
    assert info['memory_plan']['backend'] == 'cpu'
    assert info['memory_plan']['batch_per_device'] == (128 if name == 'cifar10' else 16)
    assert set(info['memory_gib']) == {'vae', 'reverse'}
    for stage, gib in info['memory_gib'].items():
      stated, claims = rows[(name, stage)]
      assert abs(gib - stated) <= 0.03 * stated, (name, stage, gib, stated)
      assert {size for size, _ in claims} == {24, 40, 80}, (name, stage, claims)
      for size, fraction in claims:
        assert gib <= CARD_GIB[size] * fraction, (name, stage, gib, size, fraction)


def test_plan_only_options_hold_only_options_this_xla_knows():
  """Newer XLA (jaxlib 0.11.2) has no ``xla_cpu_use_fusion_emitters``: it is left out there."""
  from pixdiff_jax.training import memory_plan  # pylint: disable=g-import-not-at-top
  assert memory_plan._cpu_option_known('xla_backend_optimization_level', 0)
  assert not memory_plan._cpu_option_known('xla_cpu_no_such_option', True)
  options = memory_plan.plan_only_options()
  assert options['xla_backend_optimization_level'] == 0
  assert set(options) <= set(memory_plan._PLAN_ONLY_CPU_OPTIONS)
  jax.jit(lambda x: x * 2).lower(jnp.ones(3)).compile(compiler_options=options)
