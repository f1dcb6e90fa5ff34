"""Tests of the Flax networks: shapes, output ranges, the head mask, head independence, the
registry and its config errors, and the parameter counts of the paper configs."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nets_testutil import jit_apply, load_config, numpy_init, tiny_config
from pixdiff_jax import models
from pixdiff_jax.diffusion import schedules
from pixdiff_jax.models import layers

B, S, C, T = 4, 8, 3, 8


def _inputs(rng, i):
  k1, k2 = jax.random.split(rng)
  x_i = jax.random.normal(k1, (len(i), S, S, C))
  x_delta = jnp.exp(-4.0 * jax.random.uniform(k2, (len(i), S, S, C), minval=4e-3))
  return x_i, x_delta, jnp.asarray(i, jnp.int32)


@pytest.fixture(scope='module')
def vae():
  config = tiny_config()
  module = models.build_vae(config)
  return module, jit_apply(module), numpy_init(module, config)


@pytest.fixture(scope='module')
def thead():
  config = tiny_config()
  config.model.dropout = 0.5
  module = models.build_reverse_model(config)
  return module, jit_apply(module), numpy_init(module, config)


@pytest.fixture(scope='module')
def thead_vjp(thead):
  """``(params, x_i, x_delta, i, cot) -> d sum(Z * cot) / d params``, one compile for all tests."""
  _, apply, _ = thead

  def fn(params, x_i, xd, i, cot):
    return jax.grad(lambda p: jnp.sum(apply({'params': p}, x_i, xd, i, train=False) * cot))(params)

  return jax.jit(fn)


def _per_head_grad_norms(grads):
  """[T] sum of |g| over every parameter of head j (stacked on axis 0)."""
  leaves = jax.tree.leaves(grads['heads'])
  return np.sum([np.abs(np.asarray(g)).reshape(g.shape[0], -1).sum(1) for g in leaves], axis=0)


# ---------------------------------------------------------------------------- layers
def test_sinusoidal_embedding_size_and_values():
  emb = layers.sinusoidal_embedding(jnp.array([0.0, 1.0, 7.5]))
  assert emb.shape == (3, 128) and emb.dtype == jnp.float32
  np.testing.assert_array_equal(emb[0, :64], 0.0)
  np.testing.assert_array_equal(emb[0, 64:], 1.0)
  # The first frequency is 1: sin(t), cos(t); the last is 1e4**(-63/64).
  np.testing.assert_allclose(emb[2, 0], np.sin(7.5), rtol=1e-6)
  np.testing.assert_allclose(emb[2, 64], np.cos(7.5), rtol=1e-6)
  np.testing.assert_allclose(emb[2, 63], np.sin(7.5 * 1e4 ** (-63 / 64)), rtol=1e-5)


def test_group_count_always_divides():
  for ch, g in [(16, 32), (24, 32), (12, 8), (7, 4), (1, 32)]:
    n = layers.num_groups_for(ch, g)
    assert 1 <= n <= g and ch % n == 0
  assert layers.num_groups_for(128, 32) == 32 and layers.num_groups_for(24, 32) == 24


# ---------------------------------------------------------------------------- scale VAE
def test_vae_shapes_and_posterior_sampling(vae):
  module, apply, params = vae
  x_i, _, i = _inputs(jax.random.key(1), [1, 2, 5, T])
  xd, mean, logvar = apply({'params': params}, x_i, i, sample_posterior=False)
  assert xd.shape == (B, S, S, C) and xd.dtype == jnp.float32
  assert mean.shape == logvar.shape == (B, module.latent_dim)
  assert mean.dtype == logvar.dtype == jnp.float32
  # Posterior sampling: rng stream 'latent', deterministic given the key, differs from the mean.
  sample = lambda key: apply({'params': params}, x_i, i, sample_posterior=True,
                             rngs={'latent': key})[0]
  np.testing.assert_array_equal(sample(jax.random.key(2)), sample(jax.random.key(2)))
  assert not np.allclose(sample(jax.random.key(2)), sample(jax.random.key(3)))
  assert not np.allclose(sample(jax.random.key(2)), xd)
  # The step is an input.
  xd_other = apply({'params': params}, x_i, i[::-1], sample_posterior=False)[0]
  assert not np.allclose(xd_other, xd)


def test_vae_output_is_always_a_valid_scale(vae):
  module, apply, params = vae
  # Blow up the output convolution so the sigmoid saturates on both sides.
  params = dict(params, decoder=dict(params['decoder']))
  params['decoder']['conv_out'] = dict(params['decoder']['conv_out'])
  params['decoder']['conv_out']['kernel'] = params['decoder']['conv_out']['kernel'] * 1e4
  x_i = 50.0 * jax.random.normal(jax.random.key(1), (B, S, S, C))
  xd = np.asarray(apply({'params': params}, x_i, jnp.array([1, 2, 5, T]),
                        sample_posterior=False)[0])
  gamma, eps = module.gamma, module.eps
  assert np.all(np.isfinite(xd)) and np.all(xd > 0) and np.all(xd <= 1)
  assert xd.min() >= np.float32(np.exp(-gamma)) * (1 - 1e-6)
  assert xd.max() <= np.float32(np.exp(-gamma * eps)) * (1 + 1e-6)
  # Saturated at both ends, so the bounds above are really exercised.
  assert xd.min() < np.exp(-gamma) * 1.01 and xd.max() > np.exp(-gamma * eps) * 0.99


def test_vae_decode_from_prior_and_estimate(vae):
  module, apply, params = vae
  prior = jax.jit(lambda p, k: models.vae_decode_prior(module, p, k, B, num_steps=T))
  xd = prior(params, jax.random.key(3))
  assert xd.shape == (B, S, S, C) and np.all((xd > 0) & (xd <= 1))
  assert not np.allclose(xd[0], xd[1])  # different z, different scale
  # The helper decodes z = normal(rng, [n, L]) at step T.
  z = jax.random.normal(jax.random.key(3), (B, module.latent_dim))
  np.testing.assert_allclose(
      xd, apply({'params': params}, z, jnp.full((B,), T), method='decode'), rtol=1e-6)
  x_i, _, i = _inputs(jax.random.key(1), [1, 2, 5, T])
  est = jax.jit(lambda p, x, s: models.vae_estimate_scale(module, p, x, s))(params, x_i, i)
  np.testing.assert_array_equal(
      est, apply({'params': params}, x_i, i, sample_posterior=False)[0])


# ---------------------------------------------------------------------------- T-headed U-Net
def test_thead_shapes_and_stacked_heads(thead):
  _, apply, params = thead
  x_i, xd, i = _inputs(jax.random.key(1), [T, T, T, T])
  z = apply({'params': params}, x_i, xd, i, train=False)
  assert z.shape == (B, T, S, S, C) and z.dtype == jnp.float32
  # Heads have their own parameters, stacked on a leading axis of size T (nn.vmap).
  head_leaves = jax.tree.leaves(params['heads'])
  assert head_leaves and all(p.shape[0] == T for p in head_leaves)
  assert 'attn0' in params['heads']  # head_attention=True
  # Different heads give different outputs from the same features.
  assert not np.allclose(z[0, 0], z[0, 1])
  # The scale input and the step both change the output.
  z_scale = apply({'params': params}, x_i, xd ** 2, i, train=False)
  assert not np.allclose(z_scale[:, 0], z[:, 0])
  z_step = apply({'params': params}, x_i, xd, jnp.array([T - 1] * B), train=False)
  assert not np.allclose(z_step[:, 0], z[:, 0])


def test_thead_mask_zeroes_heads_after_i(thead):
  _, apply, params = thead
  x_i, xd, i = _inputs(jax.random.key(1), [1, 3, 5, T])
  z = np.asarray(apply({'params': params}, x_i, xd, i, train=False))
  for b, ib in enumerate(np.asarray(i)):
    for j in range(1, T + 1):
      if j > ib:
        assert np.all(z[b, j - 1] == 0.0), (b, j)
      else:
        assert np.any(z[b, j - 1] != 0.0), (b, j)


def test_residual_heads_add_the_scales_clean_image(thead):
  """``model.residual_heads``: the same parameters give the plain heads' output plus
  ``-log(x_delta_hat) / gamma`` (float64 reference) on active heads, exactly 0 on masked heads,
  for the full call and for heads on demand."""
  _, plain, params = thead
  config = tiny_config()
  config.model.dropout = 0.5  # as the fixture (no effect with train=False)
  config.diffusion.target = 'x0'
  config.model.residual_heads = True
  residual = jit_apply(models.build_reverse_model(config))
  x_i, xd, i = _inputs(jax.random.key(2), [1, 3, 5, T])
  x0_vae = -np.log(np.asarray(xd, np.float64)) / config.diffusion.gamma
  mask = np.asarray(models.head_mask(i, T))[:, :, None, None, None]
  want = np.where(mask, np.asarray(plain({'params': params}, x_i, xd, i, train=False),
                                   np.float64) + x0_vae[:, None], 0.0)
  got = np.asarray(residual({'params': params}, x_i, xd, i, train=False))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.all(got[~np.broadcast_to(mask, got.shape)] == 0.0)
  heads = jnp.array([[1, 1], [3, 2], [5, 1], [T, 4]])
  got_heads = np.asarray(residual({'params': params}, x_i, xd, i, train=False, heads=heads))
  np.testing.assert_allclose(
      got_heads, np.take_along_axis(want, np.asarray(heads - 1)[:, :, None, None, None], 1),
      rtol=1e-5, atol=1e-5)
  config.diffusion.target = 'cumulative'
  with pytest.raises(ValueError, match="residual_heads=True needs diffusion.target='x0'"):
    models.build_reverse_model(config)


def test_masked_heads_get_exactly_zero_gradient(thead, thead_vjp):
  _, _, params = thead
  x_i, xd, i = _inputs(jax.random.key(1), [1, 3, 5, 2])
  cot = jax.random.normal(jax.random.key(2), (B, T, S, S, C))
  grads = thead_vjp(params, x_i, xd, i, cot)
  norms = _per_head_grad_norms(grads)
  assert np.all(norms[5:] == 0.0), norms
  assert np.all(norms[:5] > 0.0), norms
  # The shared backbone is trained by the active heads.
  assert np.abs(np.asarray(grads['backbone']['conv_in']['kernel'])).sum() > 0


@pytest.mark.parametrize('k', [1, 4, T])
def test_head_params_get_gradient_only_from_their_own_loss(thead, thead_vjp, k):
  _, apply, params = thead
  x_i, xd, i = _inputs(jax.random.key(1), [T] * B)
  target = jax.random.normal(jax.random.key(3), (B, S, S, C))
  z = apply({'params': params}, x_i, xd, i, train=False)
  # dL_k/dZ for L_k = sum (Z^k - target)^2 is nonzero on head k only; chain it through R.
  cot = jnp.zeros_like(z).at[:, k - 1].set(2.0 * (z[:, k - 1] - target))
  norms = _per_head_grad_norms(thead_vjp(params, x_i, xd, i, cot))
  assert norms[k - 1] > 0 and np.all(np.delete(norms, k - 1) == 0.0), norms


def test_thead_dropout_uses_dropout_stream(thead):
  _, apply, params = thead
  x_i, xd, i = _inputs(jax.random.key(1), [T] * B)
  z_eval = apply({'params': params}, x_i, xd, i, train=False)
  run = lambda key: apply({'params': params}, x_i, xd, i, train=True, rngs={'dropout': key})
  np.testing.assert_array_equal(run(jax.random.key(4)), run(jax.random.key(4)))
  assert not np.allclose(run(jax.random.key(4)), run(jax.random.key(5)))
  assert not np.allclose(run(jax.random.key(4)), z_eval)
  # Dropout never revives a masked head.
  i = jnp.array([2, 2, 2, 2])
  assert np.all(np.asarray(apply({'params': params}, x_i, xd, i, train=True,
                                 rngs={'dropout': jax.random.key(4)}))[:, 2:] == 0.0)


# ---------------------------------------------------------------------------- one-head U-Net
def test_unet_shape_and_step_dependence():
  config = tiny_config(method='ddpm')
  module = models.build_reverse_model(config)
  assert isinstance(module, models.UNet)
  params = numpy_init(module, config)
  assert 'heads' not in params
  apply = jit_apply(module)
  x = jax.random.normal(jax.random.key(1), (2, S, S, C))
  eps = apply({'params': params}, x, jnp.array([1, 500]), train=False)
  assert eps.shape == (2, S, S, C) and eps.dtype == jnp.float32
  assert not np.allclose(eps, apply({'params': params}, x, jnp.array([500, 1]), train=False))


def test_backbone_is_shared_between_unet_and_thead_unet():
  cfg_t, cfg_u = tiny_config(), tiny_config(method='ddpm')
  shapes = lambda cfg: jax.eval_shape(
      lambda k: models.init_params(models.build_reverse_model(cfg), cfg, k), jax.random.key(0))
  paths = lambda tree: {jax.tree_util.keystr(p) for p, _ in
                        jax.tree_util.tree_flatten_with_path(tree)[0]}
  p_t, p_u = paths(shapes(cfg_t)['backbone']), paths(shapes(cfg_u)['backbone'])
  # The pixel-aware trunk is the baseline's trunk plus the scale maps H_k, nothing else.
  assert p_u < p_t
  assert all("'scale_map'" in name for name in p_t - p_u)


# ---------------------------------------------------------------------------- registry, config
def test_registry_names():
  assert set(models.REVERSE_MODELS) == {'thead_unet', 'unet'}
  assert set(models.VAES) == {'scale_vae'}
  assert isinstance(models.build_reverse_model(tiny_config()), models.THeadUNet)
  assert isinstance(models.build_vae(tiny_config()), models.ScaleVAE)


def test_config_errors_name_the_field():
  config = tiny_config(image_size=32)
  config.model.ch_mult = (1, 2, 2)
  config.vae.ch_mult = (1, 2, 2, 2)
  models.validate_config(config)  # 32 is fine
  config.data.image_size = 30
  with pytest.raises(ValueError, match=r'data.image_size=30 is not divisible by '
                                       r'2\*\*\(len\(model.ch_mult\)-1\)=4'):
    models.build_reverse_model(config)

  # model.num_heads is linked to diffusion.num_steps; a config without references can differ.
  config = ml_collections.ConfigDict(tiny_config().to_dict())
  config.model.num_heads = T - 1
  with pytest.raises(ValueError, match=rf'model.num_heads={T - 1} must equal '
                                       rf'diffusion.num_steps={T}'):
    models.build_reverse_model(config)

  config = tiny_config()
  config.model.name = 'transformer'
  with pytest.raises(ValueError,
                     match=r"model.name='transformer' is unknown.*'thead_unet', 'unet'"):
    models.build_reverse_model(config)

  config = tiny_config()
  config.vae.ch_mult = (1, 2, 2)  # 8 -> 2x2
  with pytest.raises(ValueError, match=r'vae.ch_mult=\(1, 2, 2\).*to 2x2.*4x4 bottleneck.*'
                                       r'len\(vae.ch_mult\)=2'):
    models.build_vae(config)

  config = tiny_config()
  config.vae.name = 'gan'
  with pytest.raises(ValueError, match=r"vae.name='gan' is unknown.*'scale_vae'"):
    models.build_vae(config)

  config = tiny_config()
  config.method = 'ddpm'  # with model.name 'thead_unet'
  with pytest.raises(ValueError, match=r"model.name='thead_unet' does not fit method='ddpm'"):
    models.count_params(config)


def test_count_params():
  config = tiny_config()
  counts = models.count_params(config)
  for name, module in [('vae', models.build_vae(config)),
                       ('reverse_model', models.build_reverse_model(config))]:
    x = jnp.zeros((1, S, S, C))
    args = (x, jnp.ones(1)) if name == 'vae' else (x, x, jnp.ones(1))
    kw = {'sample_posterior': False} if name == 'vae' else {'train': False}
    shapes = jax.eval_shape(lambda k, m=module: m.init(k, *args, **kw), jax.random.key(0))
    assert counts[name] == sum(math.prod(p.shape) for p in jax.tree.leaves(shapes))
  assert counts['total'] == counts['vae'] + counts['reverse_model']
  # One head per step: the count is affine in T.
  rev = lambda steps: models.count_params(tiny_config(num_steps=steps))['reverse_model']
  per_head = rev(T + 1) - rev(T)
  assert per_head > 0 and rev(2 * T) - rev(T) == T * per_head
  ddpm = models.count_params(tiny_config(method='ddpm'))
  assert 'vae' not in ddpm and ddpm['total'] == ddpm['reverse_model']


@pytest.mark.parametrize('name,vae_m,reverse_m', [('cifar10', 30.3, 41.2), ('celeba', 61.3, 84.2)])
def test_paper_config_param_counts_within_15_percent(name, vae_m, reverse_m):
  counts = models.count_params(load_config(name))
  assert abs(counts['vae'] / 1e6 / vae_m - 1) <= 0.15, counts
  assert abs(counts['reverse_model'] / 1e6 / reverse_m - 1) <= 0.15, counts


@pytest.mark.parametrize('name,size,steps,gamma,lr,batch', [
    ('cifar10', 32, 200, 20.0, 1e-4, 128), ('celeba', 128, 500, 50.0, 2e-4, 16)])
def test_paper_config_hyperparameters(name, size, steps, gamma, lr, batch):
  config = load_config(name)
  models.validate_config(config)
  assert (config.data.image_size, config.data.num_channels) == (size, 3)
  assert config.diffusion.num_steps == steps == config.model.num_heads
  assert config.diffusion.gamma == gamma and config.optim.lr == lr
  assert config.training.batch_size == batch
  assert config.training.vae_steps == config.training.reverse_steps == 1_500_000
  assert config.data.random_flip
  assert config.data.dataset == name  # the TensorFlow-free readers (tfds:<name> still works)


# ---------------------------------------------------------------------------- compute dtype
def test_bfloat16_compute_keeps_float32_parameters_and_outputs():
  cfg32, cfg16 = tiny_config(), tiny_config()
  cfg16.model.dtype = cfg16.vae.dtype = 'bfloat16'
  rng = jax.random.key(3)
  x_i, x_delta, i = _inputs(rng, [1, 3, 5, 8])
  for build in (models.build_reverse_model, models.build_vae):
    m32, m16 = build(cfg32), build(cfg16)
    shapes = lambda m, cfg: jax.eval_shape(lambda k: models.init_params(m, cfg, k),
                                           jax.random.key(0))
    # Same parameters (names, shapes, float32): a checkpoint serves both compute dtypes.
    assert (jax.tree.map(lambda a: (a.shape, a.dtype), shapes(m32, cfg32))
            == jax.tree.map(lambda a: (a.shape, a.dtype), shapes(m16, cfg16)))
    params = numpy_init(m32, cfg32)
    if build is models.build_vae:
      run = lambda m: jit_apply(m)({'params': params}, x_i, i, sample_posterior=False)[0]
    else:
      run = lambda m: jit_apply(m)({'params': params}, x_i, x_delta, i, train=False)
    out32, out16 = run(m32), run(m16)
    assert out16.dtype == jnp.float32 and out16.shape == out32.shape
    # bfloat16 keeps 8 significant bits: close to float32, but not equal (it did compute in
    # bfloat16).
    err = float(jnp.max(jnp.abs(out16 - out32)) / jnp.max(jnp.abs(out32)))
    assert 0 < err < 0.1, err


def test_compute_dtype_errors_and_does_not_block_resuming():
  from pixdiff_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.model.dtype = 'float16'
  with pytest.raises(ValueError, match='model.dtype'):
    models.validate_config(config)
  stored, new = tiny_config(), tiny_config()
  new.model.dtype = new.vae.dtype = 'bfloat16'
  config_lib.check_compatible(stored, new)  # another compute dtype: same parameters
  old = ml_collections.ConfigDict(stored.to_dict())
  with old.unlocked():
    del old.model['dtype'], old.vae['dtype']  # a config.json written before the field existed
  config_lib.check_compatible(old, stored)
  new.model.ch = 16
  with pytest.raises(ValueError, match='model'):
    config_lib.check_compatible(stored, new)


def test_one_head_baseline_config_shares_the_backbone():
  from pixdiff_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  base = config_lib.one_head_baseline_config(config, num_steps=1000)
  assert config.method == 'pixel_aware' and config.diffusion.num_steps == T  # unchanged
  assert base.method == 'ddpm' and base.diffusion.num_steps == 1000
  assert isinstance(models.build_reverse_model(base), models.UNet)
  assert schedules.ddpm_alphas_cumprod(base).shape == (1000,)
  shapes = lambda cfg: jax.eval_shape(
      lambda k: models.init_params(models.build_reverse_model(cfg), cfg, k), jax.random.key(0))
  flat = lambda tree: {jax.tree_util.keystr(p): v.shape for p, v in
                       jax.tree_util.tree_flatten_with_path(tree)[0]}
  p_t, p_u = flat(shapes(config)['backbone']), flat(shapes(base)['backbone'])
  assert all(p_t[name] == shape for name, shape in p_u.items())


def test_random_params_have_the_init_shapes():
  config = tiny_config()
  module = models.build_reverse_model(config)
  params = models.random_params(module, config, seed=0)
  shapes = jax.eval_shape(lambda k: models.init_params(module, config, k), jax.random.key(0))
  assert (jax.tree.map(lambda a: (a.shape, a.dtype), params)
          == jax.tree.map(lambda a: (a.shape, a.dtype), shapes))
  kernel = np.asarray(params['heads']['conv_out']['kernel'])  # [T, 3, 3, Cin, C]
  assert abs(kernel.std() * math.sqrt(math.prod(kernel.shape[1:-1])) - 1) < 0.2


def test_loss_weighting_config_errors_and_does_not_block_resuming():
  from pixdiff_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.diffusion.loss_weighting = 'snr'
  with pytest.raises(ValueError, match='diffusion.loss_weighting'):
    config_lib.validate_config(config)
  config = tiny_config()
  config.diffusion.loss_weighting = 'min_snr'
  config.diffusion.target = 'increment'
  with pytest.raises(ValueError, match="loss_weighting='min_snr' needs diffusion.target"):
    config_lib.validate_config(config)
  config.diffusion.target = 'x0'
  config.diffusion.min_snr_gamma = 0.0
  with pytest.raises(ValueError, match='diffusion.min_snr_gamma'):
    config_lib.validate_config(config)
  config.diffusion.min_snr_gamma = 5.0
  config_lib.validate_config(config)
  stored = tiny_config()
  stored.diffusion.target = 'x0'
  config_lib.check_compatible(stored, config)  # another loss weighting: same parameters
  old = ml_collections.ConfigDict(stored.to_dict())
  with old.unlocked():
    del old.diffusion['loss_weighting'], old.diffusion['min_snr_gamma']  # written before them
  config_lib.check_compatible(old, config)
