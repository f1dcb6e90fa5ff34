"""The distill stage (docs/design.md section 7): its losses against hand-computed references, the
teacher's targets against an analytic teacher's trajectory in float64, distillation on a fixed
batch, the DDPM student, the teacher record and the distilled eval settings."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pixdiff_jax import config as config_lib, evaluation, models, sampling
from pixdiff_jax.diffusion import samplers, schedules, students
from pixdiff_jax.errors import ConfigError
from pixdiff_jax.training import distill, distill_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(method='pixel_aware', **distill_fields):
  """configs/smoke.py shortened: T = 4, heads without residual blocks (less to compile)."""
  config = config_lib.load_config_file(os.path.join(ROOT, 'configs', 'smoke.py'))
  config.diffusion.num_steps = 4
  config.model.head_num_res_blocks = 0
  if method == 'ddpm':
    config = config_lib.one_head_baseline_config(config, num_steps=100)
  for k, v in distill_fields.items():
    config.distill[k] = v
  return config


class _StubHeads:
  """A T-headed "network" ``Z^j = a_j x + b_j x_delta`` (0 for ``j > i``), with ``heads=`` as
  ``THeadUNet``'s."""

  def __init__(self, num_heads):
    self.num_heads = num_heads

  def apply(self, variables, x, xd, i, *, train, heads=None, rngs=None):
    del train, rngs
    p = variables['params']
    j = jnp.arange(1, self.num_heads + 1)
    z = (p['a'][None, :, None, None, None] * x[:, None]
         + p['b'][None, :, None, None, None] * xd[:, None])
    if heads is None:
      return jnp.where((j[None] <= i[:, None])[:, :, None, None, None], z, 0.0)
    return jnp.take_along_axis(z, (heads - 1)[:, :, None, None, None], axis=1)


def _pairs(rs, batch, num_calls, T, shape=(3, 3, 1)):
  return {'x_delta_hat': rs.uniform(0.05, 1.0, (batch,) + shape).astype(np.float32),
          'states': rs.normal(size=(batch, num_calls) + shape).astype(np.float32),
          'x0': rs.uniform(0.0, 1.0, (batch, T) + shape).astype(np.float32)}


def test_pixel_aware_loss_equals_a_hand_computed_reference():
  config = _config(final_weight=3.0)
  T, steps = 4, distill_loss.call_steps(config)
  assert steps == (4, 2)  # block starts of K = 1 and K = 2 at T = 4
  rs = np.random.RandomState(0)
  params = {'a': jnp.asarray(rs.normal(size=T), jnp.float32),
            'b': jnp.asarray(rs.normal(size=T), jnp.float32)}
  pairs = _pairs(rs, 6, len(steps), T)
  rng = jax.random.PRNGKey(3)
  loss, metrics = distill_loss.get_distill_loss_fn(config, _StubHeads(T))(params, pairs, rng)
  # The documented draw: rng_call, rng_heads, rng_dropout = split(rng, 3); c ~ U{0..C-1}.
  c = np.asarray(jax.random.randint(jax.random.split(rng, 3)[0], (6,), 0, len(steps)))
  num, den, final = 0.0, 0.0, []
  for b in range(6):
    t = steps[c[b]]
    x = pairs['states'][b, c[b]].astype(np.float64)
    for j in range(1, t + 1):
      z = float(params['a'][j - 1]) * x + float(params['b'][j - 1]) * pairs['x_delta_hat'][b]
      se = np.mean((z - pairs['x0'][b, j - 1]) ** 2)
      w = 3.0 if j == 1 else 1.0
      num, den = num + w * se, den + w
      if j == 1:
        final.append(se)
  np.testing.assert_allclose(float(loss), num / den, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['mse_final']), np.mean(final), rtol=1e-5)
  # n >= T heads per example selects every active head with weight 1: the same loss.
  config.distill.heads_per_example = T
  same, _ = distill_loss.get_distill_loss_fn(config, _StubHeads(T))(params, pairs, rng)
  np.testing.assert_allclose(float(same), num / den, rtol=1e-5)


def test_ddpm_loss_equals_a_hand_computed_reference():
  config = _config('ddpm')
  ac = schedules.ddpm_alphas_cumprod(config)
  m = distill_loss.call_steps(config)[1]
  assert ac[m - 1] <= 0.5 < ac[m - 2]  # the automatic middle step
  rs = np.random.RandomState(1)
  pairs = {'x_T': rs.normal(size=(5, 2, 2, 1)).astype(np.float32),
           'x0': rs.uniform(-1, 1, (5, 2, 2, 1)).astype(np.float32)}

  class StubUNet:
    def apply(self, variables, x, n, *, train, rngs=None):
      return 0.5 * x + (n / 100.0)[:, None, None, None]

  rng = jax.random.PRNGKey(5)
  loss, _ = distill_loss.get_distill_loss_fn(config, StubUNet())({}, pairs, rng)
  use_mid = np.asarray(jax.random.bernoulli(jax.random.split(rng)[0], 0.5, (5,)))
  ses = []
  for b in range(5):
    x_T, x0 = pairs['x_T'][b].astype(np.float64), pairs['x0'][b].astype(np.float64)
    if use_mid[b]:
      eps = (x_T - np.sqrt(ac[-1]) * x0) / np.sqrt(1 - ac[-1])
      x, n = np.sqrt(ac[m - 1]) * x0 + np.sqrt(1 - ac[m - 1]) * eps, m
    else:
      x, n = x_T, 100
    ses.append(np.mean((0.5 * x + n / 100.0 - x0) ** 2))
  np.testing.assert_allclose(float(loss), np.mean(ses), rtol=1e-5)


def _analytic_head(x, xd, j):
  """An analytic "denoiser": head j's clean image from x_j (clipped by the sampler)."""
  return 0.5 + 0.6 * jnp.tanh(x - 0.15 * j) + 0.1 * xd


def test_targets_equal_an_analytic_teachers_trajectory():
  """The pairs hold the K = T consistent sampler's states and clean-image estimates (float64
  NumPy reference); a student whose heads return them exactly reproduces the teacher through
  the distilled read (x0_steps): one call ends at its image, two calls restart at its state."""
  config = _config()
  T, eps = 4, config.diffusion.eps
  rs = np.random.RandomState(2)
  xd = rs.uniform(0.02, 1.0, (3, 4, 4, 1)).astype(np.float32)
  x_T = rs.normal(size=(3, 4, 4, 1)).astype(np.float32)
  head_fn = lambda x, d, j: _analytic_head(x, d, jnp.clip(j, 1, T).astype(jnp.float32))
  model_fn = lambda x, d, j: jnp.stack([_analytic_head(x, d, float(k)) for k in range(1, T + 1)])
  pairs = distill.pixel_aware_pairs(config, model_fn, head_fn, jnp.asarray(x_T), jnp.asarray(xd))

  ab = lambda j: xd.astype(np.float64) ** (j / T)
  x, states, x0s = x_T.astype(np.float64), {T: x_T.astype(np.float64)}, {}
  for j in range(T, 0, -1):
    x0s[j] = np.clip(0.5 + 0.6 * np.tanh(x - 0.15 * j) + 0.1 * xd, eps, 1.0)
    x = np.sqrt(ab(j - 1)) * x0s[j] + np.sqrt((1 - ab(j - 1)) / (1 - ab(j))) * (
        x - np.sqrt(ab(j)) * x0s[j])
    states[j - 1] = x
  for k, t in enumerate(distill_loss.call_steps(config)):
    np.testing.assert_allclose(pairs['states'][:, k], states[t], rtol=1e-4, atol=1e-5)
  for j in range(1, T + 1):
    np.testing.assert_allclose(pairs['x0'][:, j - 1], x0s[j], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pairs['x0'][:, 0], states[0], rtol=1e-4, atol=1e-5)

  # A perfect student: head j returns the teacher's estimate at step j, whatever the input;
  # at the second call (step 2) it returns its input, so that call shows the state it got.
  targets = jnp.moveaxis(pairs['x0'], 1, 0)                      # [T, B, ...]
  oracle = lambda x, d, j: jnp.where(j == T, targets, jnp.broadcast_to(x, targets.shape))
  read = lambda k: samplers.block_sequential_reverse(
      oracle, x_T, xd, None, num_steps=T, network_calls=k, eta=0.0, clip_denoised=True,
      eps=eps, update='x0_steps', target='x0')
  np.testing.assert_allclose(read(1), states[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(read(2), np.clip(states[2], eps, 1.0), rtol=1e-4, atol=1e-5)


def _random_teacher(config):
  vae = models.random_params(models.build_vae(config), config, seed=0)
  net = models.random_params(models.build_reverse_model(config), config, seed=1)
  return {'vae': vae, 'reverse': net}


def test_distillation_drives_the_one_pass_output_towards_the_teachers():
  """On one fixed batch of pairs, Adam on the distill loss lowers it and brings the distilled
  preset's one-call images (same keys, so the same x_T) towards the teacher's images.

  The student starts from other random weights than the (random) teacher's: started from the
  teacher's, its one-call images are already within 0.02 of this untrained teacher's.
  """
  config = _config()
  config.model.num_res_blocks = 1  # the capacity to follow the teacher in 30 steps
  teacher = _random_teacher(config)
  key = jax.random.PRNGKey(4)
  pairs = jax.jit(distill.get_teacher_fn(config, 8))(teacher, key)
  net = models.build_reverse_model(config)
  loss_fn = distill_loss.get_distill_loss_fn(config, net)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, i):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, pairs, jax.random.fold_in(key, i))
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  one_call = jax.jit(sampling.get_sample_fn(config, batch_size=8, preset='distilled'))
  want = sampling.to_unit_interval(pairs['x0'][:, 0], config)
  distance = lambda p: float(jnp.mean(jnp.abs(one_call({**teacher, 'reverse': p}, key) - want)))
  params = models.random_params(net, config, seed=7)
  opt_state = tx.init(params)
  before = distance(params)
  losses = []
  for i in range(30):
    params, opt_state, loss = step(params, opt_state, i)
    losses.append(float(loss))
  after = distance(params)
  print(f'loss {losses[0]:.4g} -> {losses[-1]:.4g}; one-call distance {before:.4g} -> {after:.4g}')
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
  assert after < 0.6 * before


def test_ddpm_teacher_student_presets_jit_and_vmap():
  """The DDPM teacher's images are DPM-Solver++(2M)'s for the same key; the 1- and 2-call
  student presets jit, vmap over keys and start from the teacher's x_T."""
  config = _config('ddpm', teacher_steps=3)
  params = {'model': models.random_params(models.build_reverse_model(config), config, seed=3)}
  key = jax.random.PRNGKey(6)
  pairs = jax.jit(distill.get_teacher_fn(config, 2))(params, key)
  solver = sampling.get_sample_fn(config, batch_size=2, sampler='dpm_solver', num_steps=3)
  np.testing.assert_array_equal(sampling.to_unit_interval(pairs['x0'], config),
                                jax.jit(solver)(params, key))
  np.testing.assert_array_equal(pairs['x_T'], students.draw_x_T(key, (2, 32, 32, 1)))
  keys = jax.random.split(key, 3)
  for preset, calls in (('distilled', 1), ('distilled_K2', 2)):
    fn = sampling.get_sample_fn(config, batch_size=2, preset=preset)
    assert fn.network_evals == calls
    many = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(params, keys)
    assert many.shape == (3, 2, 32, 32, 1) and bool(jnp.all(jnp.isfinite(many)))
    np.testing.assert_allclose(many[0], jax.jit(fn)(params, keys[0]), atol=1e-5)


def test_a_changed_teacher_or_pair_settings_is_refused(tmp_path):
  config = _config()
  params = {'vae': {'w': np.zeros(3, np.float32)}, 'reverse': {'w': np.ones(3, np.float32)}}
  identity = distill.teacher_identity(config, params, {'vae': 6, 'reverse': 6})
  distill.check_teacher(config, str(tmp_path), identity)   # not started: recorded
  recorded = json.loads((tmp_path / 'distill' / 'teacher.json').read_text())
  assert recorded == identity
  (tmp_path / 'checkpoints' / 'distill' / '4').mkdir(parents=True)  # the stage has started
  distill.check_teacher(config, str(tmp_path), identity)   # the same teacher: fine
  params['reverse']['w'][0] = 2.0
  other = distill.teacher_identity(config, params, {'vae': 6, 'reverse': 8})
  with pytest.raises(distill.TeacherChangedError,
                     match=r'was started with the teacher reverse step 6 \(crc32 .*\), vae step '
                           r'6 .* and the teacher is now reverse step 8'):
    distill.check_teacher(config, str(tmp_path), other)
  config.distill.num_pairs = 99
  with pytest.raises(distill.TeacherChangedError, match='was started with pairs made with'):
    distill.check_teacher(config, str(tmp_path), distill.teacher_identity(
        config, {'vae': {'w': np.zeros(3, np.float32)}, 'reverse': {'w': np.ones(3, np.float32)}},
        {'vae': 6, 'reverse': 6}))


def test_eval_lists_the_distilled_settings_when_the_workdir_has_the_stage():
  config = config_lib.load_config_file(os.path.join(ROOT, 'configs', 'smoke.py'))
  ev = config_lib.default_eval_config()
  names = lambda **kw: [s.name for s in evaluation.settings_for(config, ev, **kw)]
  assert 'distilled' not in names()
  assert names(distilled=True)[-2:] == ['distilled', 'distilled_K2']
  setting = evaluation.parse_setting('distilled_K2', _config('ddpm'))
  assert setting.overrides == {'preset': 'distilled_K2'}


# ---------------------------------------------------------------------------- bad input
def _error_lines(run):
  lines = [line for line in run.stderr.splitlines() if line.startswith('error:')]
  assert run.returncode == 2 and len(lines) == 1 and 'Traceback' not in run.stderr, (
      run.returncode, run.stderr[-3000:])
  return lines[0]


def test_distill_without_a_finished_teacher_names_it_and_the_command(tmp_path):
  import cli_testutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'w'
  run = cli_testutil.run_main('--config', 'configs/smoke.py', '--workdir', workdir,
                              '--stage', 'distill')
  assert _error_lines(run) == (
      f"error: stage 'distill' needs the finished stage 'reverse', and {workdir} has no "
      f'checkpoint of it; train it first: python main.py --config configs/smoke.py --workdir '
      f'{workdir} --stage all')


def test_a_resumed_distill_stage_refuses_a_changed_teacher(smoke_copy):
  import cli_testutil  # pylint: disable=g-import-not-at-top
  record = smoke_copy / 'distill' / 'teacher.json'
  identity = json.loads(record.read_text())
  identity['teacher']['reverse']['crc32'] = '00000000'  # as if reverse had been retrained
  record.write_text(json.dumps(identity))
  run = cli_testutil.run_main('--workdir', smoke_copy)
  line = _error_lines(run)
  assert line.startswith(f'error: stage distill in {smoke_copy} was started with the teacher '
                         'reverse step 6 (crc32 00000000), vae step 6 (crc32 '), line
  assert 'resuming would silently change its targets' in line


def test_zero_output_init_zeroes_only_the_ddpm_students_output_layer():
  config = _config('ddpm', output_init='zero')
  config_lib.validate_config(config)
  net = models.build_reverse_model(config)
  teacher = models.random_params(net, config, seed=3)
  student = distill.student_init(config, teacher)
  for (path, leaf), stored in zip(jax.tree_util.tree_leaves_with_path(student),
                                 jax.tree_util.tree_leaves(teacher)):
    name = jax.tree_util.keystr(path)
    if name.startswith("['conv_out']"):
      assert not np.any(np.asarray(leaf)), name
      if name.endswith("['kernel']"):
        assert np.any(np.asarray(stored)), name  # the teacher's layer was not zero
    else:
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(stored), err_msg=name)
  # With a zero output layer the student's first output is exactly 0, for any input.
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 1))
  out = net.apply({'params': student}, x, jnp.array([100, 50]), train=False)
  assert not np.any(np.asarray(out))
  # 'teacher' keeps the teacher's parameters; 'zero' is refused where the heads read x0 already.
  assert distill.student_init(_config('ddpm'), teacher) is teacher
  with pytest.raises(ConfigError, match="output_init"):
    config_lib.validate_config(_config(output_init='zero', steps=4))
