"""Failure modes: broken checkpoints, divergence, the workdir claim, one line per user mistake,
the library's checks, and the package's import graph.

Checkpoint tests damage copies of a real ``configs/smoke.py`` run (the session fixture
``smoke_workdir`` in conftest.py); user mistakes run ``main.py`` as a user does.
"""
import ast
import glob
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.experimental import checkify
from PIL import Image

from cli_testutil import ROOT, error_lines, main_cmd, main_env, run_main
from pixdiff_jax import config as config_lib, data, sampling
from pixdiff_jax.storage import checkpointing
from pixdiff_jax.training.state import create_train_state, make_optimizer


# ---------------------------------------------------------------------------- import graph
def _package_modules() -> dict[str, pathlib.Path]:
  pkg = ROOT / 'pixdiff_jax'
  mods = {}
  for path in pkg.rglob('*.py'):
    parts = path.relative_to(ROOT).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    mods['.'.join(parts)] = path
  return mods


def _import_graph() -> dict[str, set[str]]:
  """Module -> the package modules it imports anywhere in its file (functions included)."""
  mods = _package_modules()
  graph = {}
  for name, path in mods.items():
    deps = set()
    is_pkg = path.name == '__init__.py'
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names if a.name.split('.')[0] == 'pixdiff_jax')
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:  # relative import
          anchor = name.split('.') if is_pkg else name.split('.')[:-1]
          anchor = anchor[:len(anchor) - node.level + 1]
          base = '.'.join(anchor + ([base] if base else []))
        if base.split('.')[0] != 'pixdiff_jax':
          continue
        for a in node.names:
          sub = f'{base}.{a.name}'
          deps.add(sub if sub in mods else base)
    graph[name] = {d for d in deps if d in mods and d != name}
  return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == 'open':
        return stack[stack.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep)
        if found:
          return found
    stack.pop()
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_cycle_finder_finds_a_cycle():
  assert _find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
  assert _find_cycle({'a': {'b'}, 'b': set()}) is None


def test_package_import_graph_has_no_cycle():
  graph = _import_graph()
  assert 'pixdiff_jax.storage.checkpointing' in graph['pixdiff_jax.sampling.sample_fn']
  assert 'pixdiff_jax.storage.checkpointing' in graph['pixdiff_jax.training.trainer']
  assert 'pixdiff_jax.training.trainer' not in graph['pixdiff_jax.sampling.sample_fn']
  assert _find_cycle(graph) is None, _find_cycle(graph)
  run = subprocess.run([sys.executable, '-c',
                        'import pixdiff_jax.sampling, pixdiff_jax.training.trainer'],
                       cwd=ROOT, env=main_env(), capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]


# ---------------------------------------------------------------------------- checkpoints
def _largest_file(directory: pathlib.Path) -> pathlib.Path:
  files = [pathlib.Path(f) for f in glob.glob(f'{directory}/**', recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def _damage(step_dir: pathlib.Path, kind: str) -> None:
  if kind == 'truncated data file':
    f = _largest_file(step_dir)
    os.truncate(f, os.path.getsize(f) // 2)
  elif kind == 'overwritten bytes':
    # 64 bytes at 7 places. The data is compressed: a damaged stretch may decode to other,
    # finite numbers (only the checksums notice), to NaN, or fail to decode. A stretch may also
    # fall on bytes no array reads (harmless), hence several places.
    f = _largest_file(step_dir)
    raw = bytearray(f.read_bytes())
    for k in range(1, 8):
      at = len(raw) * k // 8
      raw[at:at + 64] = b'\xff' * 64
    f.write_bytes(bytes(raw))
  elif kind == 'wrong checksum':
    f = step_dir / 'checksums' / 'metadata'
    sums = json.loads(f.read_text())
    name = sorted(sums)[0]
    sums[name] = format(int(sums[name], 16) ^ 1, '08x')
    f.write_text(json.dumps(sums))
  elif kind == 'missing _METADATA':
    (step_dir / 'default' / '_METADATA').unlink()
  elif kind == 'missing item folder':
    shutil.rmtree(step_dir / 'default')
  elif kind == 'truncated manifest':
    os.truncate(step_dir / 'default' / 'manifest.ocdbt', 10)
  else:
    raise ValueError(kind)


def _abstract_train_state(config, name):
  """Shapes of stage ``name``'s whole train state (parameters, EMA, optimiser state)."""
  tx = make_optimizer(config.optim)
  return jax.eval_shape(lambda p: create_train_state(p, tx),
                        checkpointing.abstract_params(config, name))


DAMAGE = ['truncated data file', 'overwritten bytes', 'wrong checksum', 'missing _METADATA',
          'missing item folder', 'truncated manifest']


@pytest.mark.parametrize('kind', DAMAGE)
def test_unreadable_latest_checkpoint_is_moved_aside_and_the_older_one_used(smoke_copy, kind):
  config = config_lib.load_config(smoke_copy)
  stage_dir = smoke_copy / 'checkpoints' / 'reverse'
  _damage(stage_dir / '6', kind)
  warnings = []
  ckpt = checkpointing.StageCheckpointer(smoke_copy, 'reverse', read_only=True)
  state, step = ckpt.restore_latest(_abstract_train_state(config, 'reverse'),
                                    warn=warnings.append)
  ckpt.close()
  assert (step, int(state.step)) == (4, 4)
  assert len(warnings) == 1, warnings
  assert f'checkpoint {stage_dir}/6 is unreadable' in warnings[0]
  assert f'moved it to {stage_dir}-broken/6' in warnings[0]
  assert 'config' not in warnings[0]  # a damaged file is not blamed on the config
  if kind == 'wrong checksum':
    assert 'do not match the checksum written with them' in warnings[0]
  assert sorted(os.listdir(stage_dir)) == ['4']
  assert (stage_dir.parent / 'reverse-broken' / '6' / '_CHECKPOINT_METADATA').exists()


def test_no_readable_checkpoint_names_every_step(smoke_copy):
  config = config_lib.load_config(smoke_copy)
  stage_dir = smoke_copy / 'checkpoints' / 'vae'
  _damage(stage_dir / '6', 'missing item folder')
  _damage(stage_dir / '4', 'truncated data file')
  with pytest.raises(checkpointing.NoReadableCheckpointError,
                     match=r"no readable checkpoint of stage 'vae'.*step 6.*step 4"):
    checkpointing.load_stage(config, smoke_copy, 'vae')
  assert sorted(os.listdir(stage_dir.parent / 'vae-broken')) == ['4', '6']


def test_config_mismatch_is_named_as_such_and_nothing_is_moved(smoke_copy):
  config = config_lib.load_config(smoke_copy)
  config.model.ch = 16
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match='does not match the network built from this config'):
    checkpointing.load_stage(config, smoke_copy, 'reverse')
  assert sorted(os.listdir(smoke_copy / 'checkpoints' / 'reverse')) == ['4', '6']
  assert not (smoke_copy / 'checkpoints' / 'reverse-broken').exists()


def test_train_mode_resumes_from_the_newest_readable_checkpoint(smoke_workdir, smoke_copy):
  ckpts = smoke_copy / 'checkpoints'
  _damage(ckpts / 'vae' / '6', 'truncated data file')
  _damage(ckpts / 'reverse' / '6', 'missing _METADATA')
  run = run_main('--config', 'configs/smoke.py', '--workdir', smoke_copy)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr, run.stderr[-3000:]
  for stage in ('vae', 'reverse'):
    assert f'checkpoint {ckpts / stage}/6 is unreadable' in run.stderr
    assert (ckpts / f'{stage}-broken' / '6').is_dir()
    assert sorted(os.listdir(ckpts / stage)) == ['4', '6']
  # Resuming at 4 replays the same batches and randomness: the new step 6 equals the original.
  config = config_lib.load_config(smoke_copy)
  for stage in ('vae', 'reverse'):
    new, step = checkpointing.load_stage(config, smoke_copy, stage)
    old, _ = checkpointing.load_stage(config, smoke_workdir, stage)
    assert step == 6
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(old)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_sample_mode_falls_back_and_names_the_checkpoint_steps(smoke_copy):
  stage_dir = smoke_copy / 'checkpoints' / 'reverse'
  _damage(stage_dir / '6', 'missing item folder')
  run = run_main('--config', 'configs/smoke.py', '--workdir', smoke_copy, '--mode', 'sample',
                 '--num_samples', '3', '--sample_name', 'fallback')
  assert run.returncode == 0, run.stderr[-3000:]
  assert f'checkpoint {stage_dir}/6 is unreadable' in run.stderr
  assert 'sampling from checkpoints: vae step 6, reverse step 4' in run.stderr
  summary = json.loads(run.stdout)
  assert summary['checkpoint_steps'] == {'vae': 6, 'reverse': 4}
  assert summary['seconds_per_image_after_compile'] > 0 and summary['compile_seconds'] > 0
  with np.load(smoke_copy / 'samples' / 'fallback.npz') as f:
    assert f['images'].shape == (3, 32, 32, 1)


def test_parameters_load_whatever_optimiser_wrote_them(smoke_workdir):
  """Sampling reads the (EMA) parameters only: an optimiser config that changes the optimiser
  state's structure (no gradient clipping: one transformation fewer in the chain) still loads
  the same parameters, while the training state itself no longer fits."""
  config = config_lib.load_config(smoke_workdir)
  assert config.optim.grad_clip > 0
  other = config_lib.load_config(smoke_workdir)
  other.optim.grad_clip = 0.0
  for stage in ('vae', 'reverse'):
    for use_ema in (True, False):
      want, step = checkpointing.load_stage(config, smoke_workdir, stage, use_ema=use_ema)
      got, step2 = checkpointing.load_stage(other, smoke_workdir, stage, use_ema=use_ema)
      assert step == step2 == 6
      assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
      for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ema, _ = checkpointing.load_stage(other, smoke_workdir, 'reverse', use_ema=True)
  raw, _ = checkpointing.load_stage(other, smoke_workdir, 'reverse', use_ema=False)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(ema),
                                                      jax.tree_util.tree_leaves(raw)))
  # The whole train state (what resuming needs) depends on the optimiser: refused as before.
  params = checkpointing.abstract_params(config, 'vae')
  ckpt = checkpointing.StageCheckpointer(str(smoke_workdir), 'vae', read_only=True)
  try:
    for optim, fits in ((config.optim, True), (other.optim, False)):
      state = jax.eval_shape(lambda p, o=optim: create_train_state(p, make_optimizer(o)), params)
      if fits:
        ckpt.restore(state)
      else:
        with pytest.raises(checkpointing.CheckpointMismatchError):
          ckpt.restore(state)
  finally:
    ckpt.close()


# ---------------------------------------------------------------------------- divergence
@pytest.mark.parametrize('extra, why', [
    (['--config.training.vae_steps=40', '--config.training.max_skipped_updates=3'],
     'consecutive updates had non-finite gradients and were skipped '
     '(training.max_skipped_updates=3)'),
    ([], 'updates were skipped (non-finite gradients)'),  # 6 steps: the stage would end here
])
def test_huge_learning_rate_stops_with_one_line(tmp_path, extra, why):
  workdir = tmp_path / 'w'
  run = run_main('--config', 'configs/smoke.py', '--workdir', workdir, '--stage', 'vae',
                 '--config.optim.lr=1e30', '--config.training.snapshot_every=0', *extra)
  assert run.returncode == 2, run.stderr[-3000:]
  err = error_lines(run.stderr)
  assert len(err) == 1 and 'Traceback' not in run.stderr, run.stderr[-3000:]
  # Non-finite losses stay in metrics.jsonl, out of TensorBoard (which warned on each step).
  assert 'NaN or Inf' not in run.stderr, run.stderr[-3000:]
  assert err[0].startswith('error: stage vae diverged at step ')
  assert why in err[0] and 'Last good checkpoint: ' in err[0]
  print(err[0])
  stage_dir = workdir / 'checkpoints' / 'vae'
  steps = sorted(int(s) for s in os.listdir(stage_dir)) if stage_dir.exists() else []
  step = int(err[0].split('diverged at step ')[1].split(':')[0])
  assert all(s < step for s in steps)  # nothing saved once updates were skipped
  assert 6 not in steps  # the stage is not marked finished
  config = config_lib.load_config(workdir)
  for s in steps:  # every checkpoint that was written holds finite values (restore checks)
    ckpt = checkpointing.StageCheckpointer(workdir, 'vae', read_only=True)
    ckpt.restore(_abstract_train_state(config, 'vae'), s)
    ckpt.close()


# ---------------------------------------------------------------------------- the workdir claim
def test_a_run_that_fails_before_training_does_not_claim_the_workdir(tmp_path):
  workdir = tmp_path / 'w'
  missing = ['--config.data.dataset=mnist', '--config.data.path=/nonexistent/mnist']
  run = run_main('--config', 'configs/smoke.py', '--workdir', workdir, *missing)
  assert run.returncode == 2 and 'mnist' in error_lines(run.stderr)[0], run.stderr[-2000:]
  assert not (workdir / 'config.json').exists()
  # A config.json with no checkpoint (e.g. from an older version) is replaced, with a notice.
  other = config_lib.load_config_file(str(ROOT / 'configs' / 'smoke.py'))
  other.model.ch = 16
  config_lib.save_config(other, str(workdir))
  run = run_main('--config', 'configs/smoke.py', '--workdir', workdir, *missing)
  assert run.returncode == 2, run.stderr[-2000:]
  assert f'replacing {workdir}/config.json: no checkpoint was written with it' in run.stderr
  assert 'different config' not in run.stderr and 'mnist' in error_lines(run.stderr)[0]


# ---------------------------------------------------------------------------- user mistakes
def _png_folder(root: pathlib.Path, n: int = 4) -> pathlib.Path:
  root.mkdir()
  rng = np.random.default_rng(0)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / f'{i}.png')
  return root


def _bad_input(tmp_path: pathlib.Path, case: str) -> tuple[list[str], str]:
  """(main.py arguments, the expected error line or its start) for one user mistake."""
  smoke = ['--config', 'configs/smoke.py']
  workdir = tmp_path / 'w'
  if case == 'unknown field':
    return [*smoke, '--config.training.bogus=1', '--mode', 'info'], (
        "error: unknown config field 'training.bogus' in --config.training.bogus=1; "
        'training has: batch_size, checkpoint_every, ')
  if case == 'misspelt field':
    return [*smoke, '--config.training.batch_sise=8', '--mode', 'info'], (
        "error: unknown config field 'training.batch_sise' in --config.training.batch_sise=8; "
        'did you mean --config.training.batch_size?')
  if case == 'misspelt section':
    return [*smoke, '--config.traning.batch_size=8', '--mode', 'info'], (
        "error: unknown config field 'traning.batch_size' in --config.traning.batch_size=8; "
        'did you mean --config.training.batch_size?')
  if case == 'missing config file':
    return ['--config', '/nonexistent/cfg.py', '--mode', 'info'], (
        'error: config file /nonexistent/cfg.py not found (give one of configs/*.py)')
  if case == 'config syntax error':
    path = tmp_path / 'bad_config.py'
    path.write_text("def get_config():\n  config = {}\n  config['a'] = = 1\n  return config\n")
    return ['--config', path, '--mode', 'info'], (
        f"error: syntax error in config file {path}, line 3: invalid syntax: config['a'] = = 1")
  if case in ('corrupt PNG', 'truncated PNG'):
    folder = _png_folder(tmp_path / 'images')
    bad = folder / '2.png'
    if case == 'corrupt PNG':
      bad.write_bytes(b'\x89PNG\r\n\x1a\n' + os.urandom(200))
    else:
      os.truncate(bad, os.path.getsize(bad) // 2)
    return [*smoke, '--workdir', workdir, '--config.data.dataset=folder',
            f'--config.data.path={folder}'], f'error: folder dataset: cannot read image {bad}: '
  if case == 'workdir is a file':
    workdir.write_text('')
    return [*smoke, '--workdir', workdir], f'error: --workdir {workdir} is a file, not a directory'
  if case == 'unwritable workdir':
    if os.geteuid() == 0:  # root ignores permission bits; /proc takes no new directories
      workdir = pathlib.Path('/proc/pixdiff_workdir')
    else:
      parent = tmp_path / 'readonly'
      parent.mkdir()
      parent.chmod(0o500)
      workdir = parent / 'w'
    return [*smoke, '--workdir', workdir], f'error: cannot write to --workdir {workdir}: '
  raise ValueError(case)


BAD_INPUTS = ['unknown field', 'misspelt field', 'misspelt section', 'missing config file',
              'config syntax error', 'corrupt PNG', 'truncated PNG', 'workdir is a file',
              'unwritable workdir']


@pytest.mark.parametrize('case', BAD_INPUTS)
def test_bad_input_is_one_line(tmp_path, case):
  args, expected = _bad_input(tmp_path, case)
  run = run_main(*args, timeout=300)
  assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
  err = error_lines(run.stderr)
  assert len(err) == 1 and err[0].startswith(expected), run.stderr[-2000:]
  assert 'Traceback' not in run.stderr
  print(f'{case}: {err[0]}')


def test_unwritable_samples_folder_is_found_before_sampling(smoke_copy):
  samples = smoke_copy / 'samples'
  shutil.rmtree(samples)
  if os.geteuid() == 0:  # root ignores permission bits: a file where the folder should be
    samples.write_text('')
    expected = f'error: samples folder {samples} is a file, not a directory'
  else:
    samples.mkdir()
    samples.chmod(0o500)
    expected = f'error: cannot write to samples folder {samples}: '
  start = time.perf_counter()
  run = run_main('--config', 'configs/smoke.py', '--workdir', smoke_copy, '--mode', 'sample',
                 timeout=300)
  assert run.returncode == 2, run.stderr[-2000:]
  err = error_lines(run.stderr)
  assert len(err) == 1 and err[0].startswith(expected), run.stderr[-2000:]
  # Found before any checkpoint was read or anything compiled.
  assert 'sampling from checkpoints' not in run.stderr
  print(err[0], f'({time.perf_counter() - start:.1f} s)')


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_with_one_line_naming_the_checkpoint(smoke_copy, signum):
  metrics = smoke_copy / 'metrics.jsonl'
  logged = len(metrics.read_text().splitlines())
  proc = subprocess.Popen(
      main_cmd('--config', 'configs/smoke.py', '--workdir', smoke_copy,
               '--config.training.reverse_steps=100000', '--config.training.snapshot_every=0'),
      cwd=ROOT, env=main_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 600
    while len(metrics.read_text().splitlines()) <= logged:  # a reverse step beyond 6 is logged
      assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
      time.sleep(0.5)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 128 + signum, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert 'Traceback' not in stderr, stderr[-3000:]
  name = signal.Signals(signum).name
  assert last.startswith(f'interrupted: {name} during stage reverse at step '), last
  step = int(last.split(' at step ')[1].split(';')[0])
  written = smoke_copy / 'checkpoints' / 'reverse' / str(step)
  assert last == (f'interrupted: {name} during stage reverse at step {step}; checkpoint '
                  f'written: {written}; run the same command to resume')
  assert (written / '_CHECKPOINT_METADATA').exists()
  print(last)


# ---------------------------------------------------------------------------- the library
def test_to_uint8_refuses_nan_and_inf():
  np.testing.assert_array_equal(data.to_uint8(np.array([0.0, 0.5, 1.0, 2.0])),
                                [0, 128, 255, 255])
  for bad in (np.nan, np.inf):
    with pytest.raises(ValueError, match='1 of 3 pixel values are not finite'):
      data.to_uint8(np.array([0.2, bad, 0.3]))


def test_variables_of_another_config_are_named_as_such(smoke_copy):
  _, variables = sampling.load_sampler(smoke_copy)
  other = config_lib.load_config(smoke_copy)
  other.model.ch = 16
  fn = sampling.get_sample_fn(other, batch_size=1)
  with pytest.raises(ValueError, match=r"variables\['reverse'\] do not match the network this "
                                       'config builds .*shapes differ'):
    jax.eval_shape(fn, variables, jax.random.PRNGKey(0))


def test_check_finite_names_non_finite_parameters(smoke_copy):
  fn, variables = sampling.load_sampler(smoke_copy, batch_size=2, check_finite=True)
  assert fn.checkpoint_steps == {'vae': 6, 'reverse': 6}
  jitted = jax.jit(fn)
  err, images = jitted(variables, jax.random.PRNGKey(0))
  err.throw()  # finite parameters, finite images: no error
  assert images.shape == (2, 32, 32, 1) and np.all(np.isfinite(np.asarray(images)))
  broken = jax.tree_util.tree_map(np.array, variables)  # copies
  jax.tree_util.tree_leaves(broken['reverse'])[0].flat[0] = np.nan
  err, images = jitted(broken, jax.random.PRNGKey(0))
  with pytest.raises(checkify.JaxRuntimeError,
                     match='1 parameter values in `variables` are not finite'):
    err.throw()
  with pytest.raises(ValueError, match='not finite'):
    data.to_uint8(np.asarray(images))
