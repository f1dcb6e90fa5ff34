"""Tests of the training losses: inputs and targets against hand computations from
``schedules.forward_chain``, the head-mask normalisation, the VAE and DDPM losses by hand, and
one-batch overfitting of a tiny VAE and a tiny T-headed U-Net."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nets_testutil import jit_apply, numpy_init, tiny_config
from pixdiff_jax import config as config_lib, models
from pixdiff_jax.diffusion import schedules
from pixdiff_jax.training import losses

B, S, C, T = 4, 8, 3, 8
GAMMA = 4.0  # tiny_config's diffusion.gamma


def _images(seed=0, batch=B, channels=C):
  eps = 4e-3
  u = np.random.RandomState(seed).randint(0, 256, (batch, S, S, channels)) / 255.0
  return jnp.asarray(eps + (1 - eps) * u, jnp.float32)


class EchoHeads(nn.Module):
  """Stub reverse model: ``Z^j = M_j * (z_j + x_i + x_delta + i / T)`` with a free parameter ``z``.

  Its loss is zero exactly when the loss feeds the expected ``x_i``, ``x_delta`` and ``i`` and
  compares with the expected targets.
  """
  num_heads: int
  shape: tuple

  @nn.compact
  def __call__(self, x_i, x_delta, i, *, train):
    z = self.param('z', nn.initializers.zeros, self.shape)
    out = z + (x_i + x_delta)[:, None] + (i / self.num_heads)[:, None, None, None, None]
    mask = models.head_mask(i, self.num_heads)[:, :, None, None, None]
    return jnp.where(mask, out, 0.0)


def _hand_reverse_example(x0, rng, target):
  """float64 NumPy: i, x_i, targets [B, T, ...] and x_T, from the documented rng splits."""
  rng_example, _ = jax.random.split(rng)
  rng_i, rng_chain = jax.random.split(rng_example)
  i = np.asarray(jax.random.randint(rng_i, (B,), 1, T + 1))
  xs, e = schedules.forward_chain(rng_chain, x0, gamma=GAMMA, num_steps=T)
  xs, e, x0 = (np.asarray(a, np.float64) for a in (xs, e, x0))
  xd = np.exp(-GAMMA * x0)
  alpha, beta = xd ** (1 / T), 1 - xd ** (1 / T)
  # The chain really is x_j = sqrt(alpha) x_{j-1} + sqrt(beta) e_j.
  np.testing.assert_allclose(xs[1:], np.sqrt(alpha) * xs[:-1] + np.sqrt(beta) * e, atol=1e-5)
  targets = []
  for j in range(1, T + 1):
    abar = xd ** (j / T)
    if target == 'cumulative':
      targets.append((xs[j] - np.sqrt(abar) * x0) / np.sqrt(1 - abar))
    elif target == 'x0':
      targets.append(x0)
    else:
      targets.append(np.sqrt((1 - abar) / beta) * e[j - 1])
  targets = np.stack(targets, axis=1)  # [B, T, ...]
  x_i = xs[i, np.arange(B)]
  return i, x_i, targets, xs[T]


@pytest.mark.parametrize('target', ['cumulative', 'increment', 'x0'])
def test_reverse_example_targets_match_hand_computation(target):
  config = tiny_config()
  config.diffusion.target = target
  x0, rng = _images(), jax.random.key(7)
  i, x_i, targets, x_T = _hand_reverse_example(x0, rng, target)
  ex = losses.sample_reverse_example(config, x0, jax.random.split(rng)[0])
  np.testing.assert_array_equal(ex['i'], i)
  assert ex['i'].dtype == jnp.int32 and np.all((i >= 1) & (i <= T))
  np.testing.assert_allclose(ex['x_i'], x_i, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ex['x_T'], x_T, rtol=1e-6, atol=1e-6)
  assert ex['targets'].shape == (B, T, S, S, C)
  np.testing.assert_allclose(ex['targets'], targets, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(ex['mask'], np.arange(1, T + 1)[None] <= i[:, None])


@pytest.mark.parametrize('target,scale_source', [('increment', 'true'), ('cumulative', 'vae'),
                                                  ('x0', 'vae_at_T')])
def test_reverse_loss_inputs_targets_and_normalisation(target, scale_source):
  config = tiny_config()
  config.diffusion.target = target
  config.diffusion.scale_source = scale_source
  x0, rng = _images(), jax.random.key(7)
  i, x_i, targets, x_T = _hand_reverse_example(x0, rng, target)
  vae = models.build_vae(config)
  vae_params = numpy_init(vae, config)
  if scale_source == 'true':
    xd = np.exp(-GAMMA * np.asarray(x0, np.float64))
  else:  # the VAE's estimate from x_i at step i, or from the chain's x_T at step T
    x_in, i_in = (x_i, i) if scale_source == 'vae' else (x_T, np.full_like(i, T))
    xd = np.asarray(jit_apply(vae)({'params': vae_params}, jnp.asarray(x_in, jnp.float32),
                                   jnp.asarray(i_in), sample_posterior=False)[0], np.float64)
  stub = EchoHeads(T, (B, T, S, S, C))
  loss_fn = jax.jit(losses.get_reverse_loss_fn(config, stub, vae))
  # z chosen so that Z^j = target^j on every active head iff the loss fed x_i, x_delta, i.
  z_exact = targets - (x_i + xd)[:, None] - (i / T)[:, None, None, None, None]
  params = {'z': jnp.asarray(z_exact, jnp.float32)}
  loss, metrics = loss_fn(params, x0, rng, vae_params=vae_params)
  assert float(loss) < 1e-8, float(loss)
  # Offsets c_j = 0.1 j on head j: the loss is the mean over ACTIVE (example, head) pairs.
  c = 0.1 * np.arange(1, T + 1)
  params = {'z': jnp.asarray(z_exact + c[None, :, None, None, None], jnp.float32)}
  loss, metrics = loss_fn(params, x0, rng, vae_params=vae_params)
  active = np.arange(1, T + 1)[None] <= i[:, None]
  expected = np.sum(active * c[None] ** 2) / np.sum(active)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  np.testing.assert_allclose(metrics['mse_head_1'], c[0] ** 2, rtol=1e-3)
  np.testing.assert_allclose(metrics['mse_head_i'], np.mean(c[i - 1] ** 2), rtol=1e-4)
  np.testing.assert_allclose(metrics['active_heads'], np.mean(i), rtol=1e-6)
  # diagonal_weight w: the diagonal term (b, i_b) counts w times in the weighted mean.
  config.diffusion.diagonal_weight = 3.0
  loss_w = jax.jit(losses.get_reverse_loss_fn(config, stub, vae))(params, x0, rng,
                                                                 vae_params=vae_params)[0]
  diag = c[i - 1] ** 2
  expected_w = (np.sum(active * c[None] ** 2) + 2.0 * np.sum(diag)) / (np.sum(active) + 2.0 * B)
  np.testing.assert_allclose(loss_w, expected_w, rtol=1e-4)
  if scale_source == 'vae':  # the VAE is frozen
    g = jax.grad(lambda vp: loss_fn(params, x0, rng, vae_params=vp)[0])(vae_params)
    assert all(np.all(np.asarray(leaf) == 0.0) for leaf in jax.tree.leaves(g))


def test_min_snr_weighting_matches_hand_computation():
  """``loss_weighting='min_snr'``: each pixel's squared error times min(abar/(1-abar), 5) at the
  example's step (float64 by hand), the same for every head. (Heads on demand with the same
  weights: tests/test_heads_on_demand.py.)"""
  config = tiny_config()
  config.diffusion.target = 'x0'
  config.diffusion.scale_source = 'true'
  config.diffusion.loss_weighting = 'min_snr'
  config.diffusion.min_snr_gamma = 5.0
  x0, rng = _images(), jax.random.key(7)
  i, x_i, targets, _ = _hand_reverse_example(x0, rng, 'x0')
  xd = np.exp(-GAMMA * np.asarray(x0, np.float64))
  stub = EchoHeads(T, (B, T, S, S, C))
  z_exact = targets - (x_i + xd)[:, None] - (i / T)[:, None, None, None, None]
  # A pixel-dependent error on head j: r[b, j, pix] = 0.1 j + pixel pattern.
  pattern = np.random.RandomState(3).uniform(-0.2, 0.2, (1, 1, S, S, C))
  c = 0.1 * np.arange(1, T + 1)[None, :, None, None, None] + pattern
  params = {'z': jnp.asarray(z_exact + c, jnp.float32)}
  loss = jax.jit(losses.get_reverse_loss_fn(config, stub))(params, x0, rng)[0]
  abar = xd ** (i[:, None, None, None] / T)
  w = np.minimum(abar / (1 - abar), 5.0)[:, None]  # [B, 1, S, S, C]
  se = np.mean(w * np.broadcast_to(c, (B, T, S, S, C)) ** 2, axis=(2, 3, 4))  # [B, T]
  active = np.arange(1, T + 1)[None] <= i[:, None]
  expected = np.sum(active * se) / np.sum(active)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  assert not np.isclose(expected, np.sum(active * np.mean(c ** 2, axis=(2, 3, 4))) / np.sum(active),
                        rtol=1e-2)  # the weights matter here
  config.diffusion.loss_weighting = 'snr'  # checked once, where every config is checked
  with pytest.raises(ValueError, match="diffusion.loss_weighting must be one of .*got 'snr'"):
    config_lib.validate_config(config)


def test_reverse_loss_config_errors():
  config = tiny_config()
  stub = EchoHeads(T, (B, T, S, S, C))
  config.diffusion.target = 'eps'
  with pytest.raises(ValueError, match=r"diffusion.target must be one of .*got 'eps'"):
    config_lib.validate_config(config)
  config = tiny_config()
  config.diffusion.scale_source = 'vae'
  with pytest.raises(ValueError, match=r"scale_source='vae'.*vae="):
    losses.get_reverse_loss_fn(config, stub, None)
  loss_fn = losses.get_reverse_loss_fn(config, stub, models.build_vae(config))
  with pytest.raises(ValueError, match='vae_params'):
    loss_fn({'z': jnp.zeros((B, T, S, S, C))}, _images(), jax.random.key(0))


@pytest.mark.parametrize('loss_space', ['scale', 'x0'])
def test_vae_loss_by_hand(loss_space):
  config = tiny_config()
  config.vae.kl_weight = 0.5
  config.vae.loss_space = loss_space
  vae = models.build_vae(config)
  params = numpy_init(vae, config)
  apply = jit_apply(vae)
  x0, rng = _images(), jax.random.key(3)
  loss_fn = jax.jit(losses.get_vae_loss_fn(config, vae))
  rng_i, rng_noise, rng_latent = jax.random.split(rng, 3)
  i = jax.random.randint(rng_i, (B,), 1, T + 1)
  noise = np.asarray(jax.random.normal(rng_noise, x0.shape), np.float64)
  x0_64 = np.asarray(x0, np.float64)
  abar = np.exp(-GAMMA * x0_64 * np.asarray(i)[:, None, None, None] / T)
  x_i = np.sqrt(abar) * x0_64 + np.sqrt(1 - abar) * noise
  xd, mean, logvar = (np.asarray(a, np.float64) for a in apply(
      {'params': params}, jnp.asarray(x_i, jnp.float32), i, sample_posterior=True,
      rngs={'latent': rng_latent}))
  if loss_space == 'scale':
    mse = np.mean((xd - np.exp(-GAMMA * x0_64)) ** 2)
  else:
    mse = np.mean((-np.log(xd) / GAMMA - x0_64) ** 2)
  kl = np.mean(0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1 - logvar, axis=-1))
  loss, metrics = loss_fn(params, x0, rng)
  np.testing.assert_allclose(metrics['mse'], mse, rtol=1e-4)
  np.testing.assert_allclose(metrics['kl'], kl, rtol=1e-4)
  np.testing.assert_allclose(metrics['kl_per_pixel'], kl / (S * S * C), rtol=1e-4)
  np.testing.assert_allclose(loss, mse + 0.5 * kl / (S * S * C), rtol=1e-4)
  assert kl > 0 and mse > 0
  np.testing.assert_allclose(metrics['x0_mae'], np.mean(np.abs(-np.log(xd) / GAMMA - x0_64)),
                             rtol=1e-4)
  config.vae.loss_space = 'log'
  with pytest.raises(ValueError, match='vae.loss_space'):
    config_lib.validate_config(config)
  config.vae.loss_space = 'scale'
  config.vae.kl_weight = -1.0
  with pytest.raises(ValueError, match='vae.kl_weight must be >= 0'):
    config_lib.validate_config(config)


class EchoEps(nn.Module):
  """Stub baseline: ``eps_hat = x + t / 1000 + p``."""
  shape: tuple

  @nn.compact
  def __call__(self, x, t, *, train):
    return x + (t / 1000.0)[:, None, None, None] + self.param('p', nn.initializers.zeros,
                                                              self.shape)


@pytest.mark.parametrize('schedule', ['linear', 'cosine'])
def test_ddpm_loss_by_hand(schedule):
  config = tiny_config(method='ddpm', num_steps=1000)
  config.diffusion.schedule = schedule
  x0 = 2.0 * _images() - 1.0  # the baseline trains on [-1, 1]
  rng = jax.random.key(5)
  rng_n, rng_noise, _ = jax.random.split(rng, 3)
  n = np.asarray(jax.random.randint(rng_n, (B,), 1, 1001))
  noise = np.asarray(jax.random.normal(rng_noise, x0.shape), np.float64)
  table = {'linear': schedules.linear_alphas_cumprod(1000, 1e-4, 0.02),
           'cosine': schedules.cosine_alphas_cumprod(1000)}[schedule]
  abar = table[n - 1][:, None, None, None]
  x_n = np.sqrt(abar) * np.asarray(x0, np.float64) + np.sqrt(1 - abar) * noise
  loss_fn = jax.jit(losses.get_ddpm_loss_fn(config, EchoEps((B, S, S, C))))
  p_exact = noise - x_n - (n / 1000.0)[:, None, None, None]
  loss, metrics = loss_fn({'p': jnp.asarray(p_exact, jnp.float32)}, x0, rng)
  assert float(loss) < 1e-10 and float(metrics['mse']) == float(loss)
  loss, _ = loss_fn({'p': jnp.zeros((B, S, S, C))}, x0, rng)
  np.testing.assert_allclose(loss, np.mean(p_exact ** 2), rtol=1e-5)


# ---------------------------------------------------------------------------- overfitting
def _overfit(loss_fn, params, x0, num_steps, lr, **kwargs):
  """Adam on one fixed batch and one fixed rng (a deterministic objective).

  Returns the loss of every step taken; stops early once the loss is 10x below the first one.
  """
  tx = optax.adam(lr)
  rng = jax.random.key(11)

  @jax.jit
  def step(params, opt_state):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x0, rng, **kwargs)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  history = []
  for _ in range(num_steps):
    params, opt_state, loss = step(params, opt_state)
    history.append(float(loss))
    if history[-1] * 10 <= history[0]:
      break
  assert np.all(np.isfinite(history))
  return np.array(history)


def test_tiny_vae_overfits_one_batch():
  config = tiny_config(channels=1)
  vae = models.build_vae(config)
  history = _overfit(losses.get_vae_loss_fn(config, vae), numpy_init(vae, config),
                     _images(batch=8, channels=1), num_steps=60, lr=3e-3)
  assert history[-1] * 10 <= history[0], history


def test_tiny_thead_unet_overfits_one_batch():
  config = tiny_config(channels=1)
  # One U-Net level keeps the XLA:CPU compile short; the middle block still has attention.
  config.model.ch = 16
  config.model.ch_mult = (1,)
  config.model.attn_resolutions = ()
  config.model.head_ch = 8
  config.model.head_attention = False
  config.diffusion.scale_source = 'true'
  net = models.build_reverse_model(config)
  history = _overfit(losses.get_reverse_loss_fn(config, net), numpy_init(net, config),
                     _images(batch=8, channels=1), num_steps=60, lr=3e-3)
  assert history[-1] * 10 <= history[0], history
