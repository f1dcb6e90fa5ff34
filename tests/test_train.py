"""Training loop: pmap == single-device step, checkpoint round trip, exact resume after a crash."""
import json
import os
import signal

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pixdiff_jax import config as config_lib
from pixdiff_jax.storage import checkpointing
from pixdiff_jax.training import trainer
from pixdiff_jax.training.state import create_train_state, make_optimizer, run_init

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(jax.local_device_count() < 2, reason='needs 2 CPU devices')


def _config(**training):
  config = config_lib.load_config_file(os.path.join(ROOT, 'configs', 'smoke.py'))
  config.data.max_examples = 64
  # Smaller than smoke.py where it does not change the code path: compile time dominates here.
  config.diffusion.num_steps = 4
  config.model.head_num_res_blocks = 0
  config.distill.steps = 0  # on only where a test trains it
  for k, v in training.items():
    config.training[k] = v
  return config


def _leaves_close(a, b, **tol):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_pmap_step_equals_single_device_step():
  """One pmap step over 2 devices == per-device gradients averaged on one device, then Adam.

  The reverse stage (frozen VAE params as ``aux``) shares this code path; it is left out to
  keep the suite's compile time down (its single-device path runs in the resume test).
  """
  config = _config()
  stage = trainer.build_stage(config, 'vae')
  tx = make_optimizer(config.optim)
  state = create_train_state(run_init(stage.init_params, jax.random.PRNGKey(0)), tx)
  key = jax.random.PRNGKey(7)
  x0 = jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 32, 32, 1), minval=4e-3, maxval=1.0)

  p_step = trainer.get_p_train_step(stage.loss_fn, tx, ema_decay=0.9, ema_warmup=False)
  p_state, _ = p_step(flax.jax_utils.replicate(state), x0[:, None], key,
                      flax.jax_utils.replicate(stage.aux))
  got = flax.jax_utils.unreplicate(p_state)

  # Reference: the same per-device randomness, gradients averaged by hand.
  # (jitted: op-by-op dispatch of the loss's gradient costs far more than one compilation)
  grad_fn = jax.jit(jax.grad(lambda p, x, r: stage.loss_fn(p, x, r, stage.aux)[0]))
  grads = []
  for d in range(2):
    rng = jax.random.fold_in(jax.random.fold_in(key, d), state.step)
    grads.append(grad_fn(state.params, x0[d], rng))
  mean_grad = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, *grads)
  updates, _ = jax.jit(tx.update)(mean_grad, state.opt_state, state.params)
  want = optax.apply_updates(state.params, updates)
  _leaves_close(got.params, want, rtol=2e-4, atol=2e-6)
  _leaves_close(got.ema_params, jax.tree_util.tree_map(
      lambda e, p: 0.9 * e + 0.1 * p, state.params, want), rtol=2e-4, atol=2e-6)
  assert int(got.step) == 1


def test_train_step_compiles_once_across_steps():
  """Steps 2, 3, 4 (new batches, advanced state) reuse step 1's executable: nothing is traced,
  lowered or compiled again (counted with jax.monitoring's compile events)."""
  config = _config()
  stage = trainer.build_stage(config, 'vae')
  tx = make_optimizer(config.optim)
  state = create_train_state(run_init(stage.init_params, jax.random.PRNGKey(0)), tx)
  p_step = trainer.get_p_train_step(stage.loss_fn, tx, ema_decay=0.9, ema_warmup=True)
  p_state = trainer.replicate_for_step(state)
  aux = trainer.replicate_for_step(stage.aux)
  key = jax.random.PRNGKey(3)
  rs = np.random.RandomState(0)
  batches = [rs.uniform(4e-3, 1.0, (2, 1, 4, 32, 32, 1)).astype(np.float32) for _ in range(4)]
  events = []

  def listener(name, *args, **kwargs):
    if '/compile/' in name:
      events.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    counts = []
    for x0 in batches:
      p_state, metrics = p_step(p_state, x0, key, aux)
      jax.device_get(metrics)
      counts.append(len(events))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert counts[0] > 0, 'the first step must have compiled (else the listener saw nothing)'
  assert counts[1:] == [counts[0]] * 3, counts
  assert int(flax.jax_utils.unreplicate(p_state).step) == 4


def test_checkpoint_round_trip_is_bit_identical(tmp_path):
  config = _config()
  stage = trainer.build_stage(config, 'vae')
  tx = make_optimizer(config.optim)
  state = create_train_state(run_init(stage.init_params, jax.random.PRNGKey(0)), tx)
  state = state.replace(step=jnp.asarray(5, jnp.int32), ema_params=jax.tree_util.tree_map(
      lambda p: p + 0.25, state.params))
  ckpt = checkpointing.StageCheckpointer(str(tmp_path), 'vae')
  ckpt.save(5, state)
  ckpt.wait()
  fresh = jax.eval_shape(lambda k: create_train_state(stage.init_params(k), tx),
                         jax.random.PRNGKey(1))
  restored = ckpt.restore(fresh)
  ckpt.close()
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
    assert np.asarray(a).dtype == np.asarray(b).dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Crash(KeyboardInterrupt):
  pass


def test_interrupted_run_resumes_to_the_same_parameters(tmp_path):
  """A run killed mid-stage and restarted with the same command ends where an uninterrupted
  run ends: same data order, same per-step randomness, optimiser and EMA state restored. The
  distill stage too (killed at its step 2): the same pairs (read back from its cache), the same
  batches of them, the same parameters bit for bit."""
  config = _config(vae_steps=2, reverse_steps=4, checkpoint_every=100, snapshot_every=0,
                   log_every=2, steps_per_dispatch=1)
  config.distill.update(steps=3, batch_size=4, num_pairs=6, teacher_batch=4)
  full = trainer.train(config, str(tmp_path / 'full'))

  def crash_at(name):
    def hook(stage, step):
      if stage == name and step == 2:
        raise _Crash()
    return hook

  workdir = str(tmp_path / 'crashed')
  with pytest.raises(KeyboardInterrupt):
    trainer.train(config, workdir, hooks=[crash_at('reverse')])
  # The interrupt wrote a checkpoint although checkpoint_every=100.
  assert checkpointing.StageCheckpointer(workdir, 'reverse').latest_step() == 2
  with pytest.raises(KeyboardInterrupt):
    trainer.train(config, workdir, hooks=[crash_at('distill')])
  assert checkpointing.StageCheckpointer(workdir, 'distill').latest_step() == 2
  resumed = trainer.train(config, workdir)
  for name in ('vae', 'reverse'):
    _leaves_close(full[name], resumed[name], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(full['distill']),
                  jax.tree_util.tree_leaves(resumed['distill'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A third start finds both stages finished and trains nothing.
  calls = []
  trainer.train(config, workdir, hooks=[lambda s, k: calls.append((s, k))])
  assert calls == []
  assert os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
  # The distill stage's teacher is the reverse stage's final EMA parameters.
  recorded = json.load(open(os.path.join(workdir, 'distill', 'teacher.json'), encoding='utf-8'))
  assert recorded['teacher']['reverse']['step'] == 4


def test_a_signal_is_acted_on_between_steps_and_a_second_one_at_once():
  """The first SIGINT / SIGTERM only sets a flag (it must not land inside a checkpoint write);
  ``check()`` between steps raises it; a second signal raises immediately; handlers restored."""
  before = signal.getsignal(signal.SIGINT)
  for signum in (signal.SIGINT, signal.SIGTERM):
    with trainer._Interrupt() as interrupt:  # pylint: disable=protected-access
      os.kill(os.getpid(), signum)  # delivered to the main thread before kill() returns
      assert interrupt.signum == signum
      with pytest.raises(KeyboardInterrupt) as raised:
        interrupt.check()
      assert raised.value.signum == signum
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signum)
  assert signal.getsignal(signal.SIGINT) is before
