"""Helpers shared by test_models.py and test_losses.py: tiny configs and a compile-free init.

Flax's ``module.init`` under XLA:CPU spends most of its compile time on the threefry random
initialisers (tens of seconds even for tiny networks on 2 cores), so the tests take the parameter
shapes from ``jax.eval_shape`` and fill them in NumPy with Flax's default initialisers:
LeCun-normal kernels (std ``1/sqrt(fan_in)``), zero biases, unit GroupNorm scales.
"""
import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from pixdiff_jax import models

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(method='pixel_aware', num_steps=8, image_size=8, channels=3):
  """A pixel-aware (or DDPM) config with networks of a few hundred thousand parameters."""
  config = default.get_default_config()
  config.method = method
  config.data.image_size = image_size
  config.data.num_channels = channels
  config.diffusion.num_steps = num_steps
  config.diffusion.gamma = 4.0
  config.vae.ch = 8
  config.vae.ch_mult = (1, 2)
  config.vae.num_res_blocks = 1
  config.vae.latent_dim = 16
  config.vae.num_groups = 4
  config.model.name = 'unet' if method == 'ddpm' else 'thead_unet'
  config.model.ch = 8
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.num_groups = 4
  config.model.head_ch = 4
  config.model.head_num_res_blocks = 1
  config.model.head_attention = True
  return config


def load_config(name):
  """``configs/<name>.py``'s ``get_config()``, loaded by path like ml_collections does."""
  spec = importlib.util.spec_from_file_location(f'_test_cfg_{name}',
                                                ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def numpy_init(module, config, seed=0):
  """Parameters of ``module`` with Flax's default initialisers, drawn in NumPy (no compile)."""
  shapes = jax.eval_shape(lambda k: models.init_params(module, config, k), jax.random.key(0))
  rs = np.random.RandomState(seed)

  def init(path, leaf):
    keys = [getattr(p, 'key', None) for p in path]
    shape = leaf.shape
    if keys[-1] == 'kernel':
      lead = 1 if 'heads' in keys else 0  # stacked heads: axis 0 is the head axis
      fan_in = math.prod(shape[lead:-1])
      return jnp.asarray(rs.standard_normal(shape) / math.sqrt(fan_in), jnp.float32)
    if keys[-1] == 'scale':
      return jnp.ones(shape, jnp.float32)
    if keys[-1] == 'bias':
      return jnp.zeros(shape, jnp.float32)
    raise AssertionError(f'unexpected parameter {keys}')

  return jax.tree_util.tree_map_with_path(init, shapes)


def jit_apply(module):
  """``module.apply`` under jit (eager op-by-op dispatch compiles every op separately)."""
  return jax.jit(module.apply, static_argnames=('train', 'sample_posterior', 'method'))
