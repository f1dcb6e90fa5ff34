"""Heads on demand: the T-headed U-Net evaluates only the heads a caller reads.

* ``THeadUNet(..., heads=)`` equals the matching heads of the full call (shared or per example).
* Sampling: an update that reads one head per call evaluates only that head (``head_fn``), the
  paper's K=1 recursion still evaluates all T, and the samples equal the all-heads samples.
* Training: ``diffusion.heads_per_example = n`` draws the diagonal head plus n-1 active heads
  (``losses.select_heads``): with n >= T the loss and its gradient equal the masked all-heads
  loss, and for n < T the mean over many draws equals it (unbiased).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nets_testutil import jit_apply, numpy_init, tiny_config
from pixdiff_jax import models, sampling
from pixdiff_jax.diffusion import parametrisation, samplers
from pixdiff_jax.training import losses

B, S, C, T = 4, 8, 3, 8


def _inputs(seed=1):
  k1, k2 = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(k1, (B, S, S, C))
  xd = jnp.exp(-4.0 * jax.random.uniform(k2, (B, S, S, C), minval=4e-3, maxval=1.0))
  return x, xd


@pytest.fixture(scope='module')
def thead():
  config = tiny_config()
  config.model.head_attention = False
  module = models.build_reverse_model(config)
  return config, module, numpy_init(module, config)


def test_selected_heads_equal_the_full_call(thead):
  _, module, params = thead
  x, xd = _inputs()
  i = jnp.array([8, 5, 3, 1])
  apply = jit_apply(module)
  full = np.asarray(apply({'params': params}, x, xd, i, train=False))
  shared = np.asarray(apply({'params': params}, x, xd, i, train=False, heads=jnp.array([1, 3])))
  np.testing.assert_allclose(shared[0], full[0, [0, 2]], rtol=1e-5, atol=1e-5)
  per_example = jnp.array([[8, 1], [5, 2], [3, 3], [1, 1]])  # active heads only
  got = np.asarray(apply({'params': params}, x, xd, i, train=False, heads=per_example))
  want = np.take_along_axis(full, np.asarray(per_example - 1)[:, :, None, None, None], axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='heads must be int'):
    apply({'params': params}, x, xd, i, train=False, heads=jnp.ones((3, 2), jnp.int32))


# ---------------------------------------------------------------------------- sampling
def _model_and_head_fns(module, params):
  def model_fn(x_j, xd, j):
    steps = jnp.full((x_j.shape[0],), j, jnp.int32)
    return parametrisation.heads_first(
        module.apply({'params': params}, x_j, xd, steps, train=False))

  def head_fn(x_j, xd, j):
    steps = jnp.full((x_j.shape[0],), j, jnp.int32)
    head = jnp.clip(jnp.asarray(j, jnp.int32), 1, T)[None]
    return module.apply({'params': params}, x_j, xd, steps, train=False, heads=head)[:, 0]

  return model_fn, head_fn


def _refuse(*args):
  raise AssertionError('this network function must not be called')


@pytest.mark.parametrize('update,K,target', [('x0_jump', T, 'x0'), ('x0_jump', 2, 'cumulative'),
                                             ('x0_jump', 1, 'v'), ('recursion', T, 'cumulative')])
def test_one_head_updates_call_only_that_head_and_give_the_same_samples(thead, update, K, target):
  _, module, params = thead
  model_fn, head_fn = _model_and_head_fns(module, params)
  x, xd = _inputs(2)
  kw = dict(num_steps=T, network_calls=K, eta=0.5, clip_denoised=True, update=update,
            target=target)
  rng = jax.random.key(5)
  all_heads = samplers.block_sequential_reverse(model_fn, x, xd, rng, **kw)
  # model_fn refuses to run: the sampler evaluated head_fn only.
  one_head = samplers.block_sequential_reverse(_refuse, x, xd, rng, head_fn=head_fn, **kw)
  np.testing.assert_allclose(one_head, all_heads, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('update,K,target', [('recursion', 1, 'cumulative'),
                                             ('x0_jump', 2, 'increment')])
def test_updates_that_read_several_heads_evaluate_all(thead, update, K, target):
  _, module, params = thead
  model_fn, _ = _model_and_head_fns(module, params)
  x, xd = _inputs(3)
  # head_fn refuses to run: the paper's recursion (and 'increment' x0_jump) read all T heads.
  samplers.block_sequential_reverse(model_fn, x, xd, jax.random.key(0), num_steps=T,
                                    network_calls=K, eta=1.0, update=update, target=target,
                                    head_fn=_refuse)


def test_sample_fn_x0_jump_matches_all_heads_sampler(thead):
  config, module, params = thead
  vae = models.build_vae(config)
  variables = {'vae': numpy_init(vae, config), 'reverse': params}
  config.diffusion.target = 'x0'
  fn = sampling.get_sample_fn(config, batch_size=B, preset='consistent', network_calls=T)
  got = jax.jit(fn)(variables, jax.random.key(4))
  # The same sampler by hand with every head evaluated (model_fn only).
  k_prior, k_xt, k_loop = jax.random.split(jax.random.key(4), 3)
  xd = models.vae_decode_prior(vae, variables['vae'], k_prior, B, num_steps=T)
  from pixdiff_jax.diffusion import schedules  # pylint: disable=g-import-not-at-top
  noise = jax.random.normal(k_xt, (B, S, S, C))
  x_T = (jnp.sqrt(schedules.alpha_bar(xd, T, T)) * schedules.x0_from_scale(xd, 4.0)
         + jnp.sqrt(schedules.one_minus_alpha_bar(xd, T, T)) * noise)
  model_fn, _ = _model_and_head_fns(module, params)
  x0 = samplers.block_sequential_reverse(model_fn, x_T, xd, k_loop, num_steps=T,
                                         network_calls=T, eta=0.0, clip_denoised=True,
                                         update='x0_jump', target='x0')
  np.testing.assert_allclose(got, sampling.to_unit_interval(x0, config), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- training
def test_select_heads_is_unbiased_by_exact_expectation():
  i = jnp.array([1, 2, 5, 8, 8, 3])
  f = np.random.RandomState(0).uniform(0, 1, (len(i), T))  # any per-head value
  draws = 20000
  for n in (2, 3, T):
    heads, w = jax.jit(jax.vmap(lambda k: losses.select_heads(
        k, i, num_steps=T, heads_per_example=n, diagonal_weight=2.0)))(
            jax.random.split(jax.random.key(n), draws))
    heads, w = np.asarray(heads), np.asarray(w)
    assert heads.shape == (draws, len(i), n) and np.all((heads >= 1) & (heads <= np.asarray(i)[:, None]))
    assert np.all(heads[:, :, 0] == np.asarray(i)) and np.all(w[:, :, 0] == 2.0)
    # distinct non-diagonal heads with positive weight, all j < i
    for b, ib in enumerate(np.asarray(i)):
      picked = heads[:, b, 1:][w[:, b, 1:] > 0].reshape(draws, -1)
      assert picked.shape[1] == min(n - 1, ib - 1)
      assert np.all(picked < ib)
      if picked.shape[1] > 1:
        assert np.all(np.diff(np.sort(picked, axis=1), axis=1) > 0)
    est = np.sum(w * np.take_along_axis(f[None], heads - 1, axis=2), axis=2)  # [draws, B]
    exact = np.array([2.0 * f[b, ib - 1] + f[b, :ib - 1].sum() for b, ib in enumerate(np.asarray(i))])
    if n == T:
      np.testing.assert_allclose(est, np.broadcast_to(exact, est.shape), rtol=1e-5)
    else:
      se = est.std(0) / np.sqrt(draws) + 1e-12
      assert np.all(np.abs(est.mean(0) - exact) < 5 * se + 1e-6), (est.mean(0), exact)
  with pytest.raises(ValueError, match='heads_per_example'):
    losses.select_heads(jax.random.key(0), i, num_steps=T, heads_per_example=1)


@pytest.fixture(scope='module')
def reverse_losses(thead):
  config, module, params = thead
  config = config.copy_and_resolve_references()
  config.diffusion.diagonal_weight = 2.0
  config.diffusion.scale_source = 'true'  # no VAE: less to compile, the heads are the same
  fns = {}
  for n in (0, 3, T):
    config.diffusion.heads_per_example = n
    fns[n] = losses.get_reverse_loss_fn(config, module)
  config.diffusion.loss_weighting = 'min_snr'
  for n in (0, T):
    config.diffusion.heads_per_example = n
    fns['min_snr', n] = losses.get_reverse_loss_fn(config, module)
  return fns, params, None


def _x0(seed=0):
  u = np.random.RandomState(seed).randint(0, 256, (B, S, S, C)) / 255.0
  return jnp.asarray(4e-3 + (1 - 4e-3) * u, jnp.float32)


@pytest.mark.parametrize('weighting', ['none', 'min_snr'])
def test_all_active_heads_give_the_masked_loss_and_gradient(reverse_losses, weighting):
  fns, params, vae_params = reverse_losses
  x0, rng = _x0(), jax.random.key(11)
  value_grad = lambda fn: jax.jit(jax.value_and_grad(
      lambda p: fn(p, x0, rng, vae_params=vae_params, train=False)[0]))(params)
  if weighting == 'min_snr':  # the same per-pixel weights on both paths (values only: cheaper)
    value = lambda fn: float(jax.jit(lambda: fn(params, x0, rng, vae_params=vae_params,
                                                train=False)[0])())
    loss_full = value(fns['min_snr', 0])
    np.testing.assert_allclose(value(fns['min_snr', T]), loss_full, rtol=1e-5)
    assert abs(loss_full - value(fns[0])) > 1e-3 * loss_full  # the weights change the loss
    return
  (loss_full, g_full), (loss_all, g_all) = value_grad(fns[0]), value_grad(fns[T])
  np.testing.assert_allclose(loss_all, loss_full, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_all), jax.tree.leaves(g_full)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_subsampled_loss_is_unbiased(reverse_losses):
  fns, params, vae_params = reverse_losses
  x0, rng = _x0(1), jax.random.key(12)
  full = float(jax.jit(lambda: fns[0](params, x0, rng, vae_params=vae_params, train=False)[0])())
  draws = 400
  sub = np.asarray(jax.jit(jax.vmap(lambda k: fns[3](params, x0, rng, vae_params=vae_params,
                                                     train=False, heads_rng=k)[0]))(
      jax.random.split(jax.random.key(3), draws)))
  assert sub.std() > 0  # the draws differ
  assert abs(sub.mean() - full) < 4 * sub.std() / np.sqrt(draws), (sub.mean(), full, sub.std())
