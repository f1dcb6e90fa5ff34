"""Flax networks of pixdiff_jax, selected by name from the config.

* ``config.vae.name``:   ``'scale_vae'`` -> :class:`ScaleVAE` (the scale estimator ``G``).
* ``config.model.name``: ``'thead_unet'`` -> :class:`THeadUNet` (the reverse model ``R``,
  ``method='pixel_aware'``), ``'unet'`` -> :class:`UNet` (one-head baseline, ``method='ddpm'``).

Interfaces (all variables live in the ``'params'`` collection; no batch statistics)::

    vae.apply({'params': p}, x_i, i, sample_posterior=True, rngs={'latent': key})
        -> (x_delta_hat [B,H,W,C], mean [B,L], logvar [B,L])
    vae.apply({'params': p}, z, i, method='decode') -> x_delta_hat [B,H,W,C]
    thead.apply({'params': p}, x_i, x_delta_hat, i, train=True, rngs={'dropout': key})
        -> Z [B,T,H,W,C]    (Z[:, j-1] = Z^j, exactly 0 for j > i)
    unet.apply({'params': p}, x, t, train=True, rngs={'dropout': key}) -> eps_hat [B,H,W,C]

Steps are always the step number: ``i`` in ``1..T`` for the pixel-aware networks, ``t = n`` in
``1..T`` for the baseline (``schedules.ddpm_alphas_cumprod(config)[n - 1]`` is its ``abar_n``).
"""
from __future__ import annotations

import math
from typing import Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jaxtyping import Array, ArrayLike, Float


from pixdiff_jax.errors import ConfigError
from pixdiff_jax.models.scale_vae import BOTTLENECK_SIZE, ScaleVAE
from pixdiff_jax.models.thead_unet import head_mask, THeadUNet
from pixdiff_jax.models.unet import UNet, UNetBackbone

__all__ = [
    'ScaleVAE', 'THeadUNet', 'UNet', 'UNetBackbone', 'head_mask', 'REVERSE_MODELS', 'VAES',
    'METHOD_MODELS', 'validate_config', 'build_vae', 'build_reverse_model', 'init_params',
    'count_params', 'vae_estimate_scale', 'vae_decode_prior',
    'COMPUTE_DTYPES', 'compute_dtype', 'random_params', 'bfloat16_on_cpu_note',
]

REVERSE_MODELS = {'thead_unet': THeadUNet, 'unet': UNet}
VAES = {'scale_vae': ScaleVAE}
# The reverse-model name each method needs.
METHOD_MODELS = {'pixel_aware': 'thead_unet', 'ddpm': 'unet'}
# config.vae.dtype / config.model.dtype: the compute dtype of a network. Parameters, the
# optimiser, the networks' outputs and the losses stay float32 either way.
COMPUTE_DTYPES = {'float32': None, 'bfloat16': jnp.bfloat16}


def compute_dtype(section: ml_collections.ConfigDict):
  """The Flax ``dtype`` of ``config.vae`` or ``config.model`` (``None`` = float32)."""
  name = section.get('dtype', 'float32')
  if name not in COMPUTE_DTYPES:
    raise ConfigError(f'dtype={name!r} is unknown; known compute dtypes: {list(COMPUTE_DTYPES)}')
  return COMPUTE_DTYPES[name]


def bfloat16_on_cpu_note(config: ml_collections.ConfigDict) -> str | None:
  """A one-line note when bfloat16 compute is asked for and JAX runs on the CPU, else None.

  XLA:CPU gains nothing from bfloat16: on the 2-core development Xeon (which has AMX-BF16) a
  train step of configs/fashion_mnist.py took 1.15x (VAE) and 1.33x (reverse) the float32
  step's time, and the paper-size CIFAR-10 reverse step compiled in 144 s instead of 33 s.
  """
  wanted = [f'{s}.dtype=bfloat16' for s in ('vae', 'model')
            if s in config and config[s].get('dtype', 'float32') == 'bfloat16']
  if not wanted or jax.default_backend() != 'cpu':
    return None
  return (f'{" and ".join(wanted)} on the CPU: slower than float32 here, not faster (1.15-1.33x '
          f'the float32 step time measured, compilation up to 4x longer); bfloat16 is for GPUs '
          f'and TPUs, use float32 on the CPU')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` (a ``ValueError``) naming the config field when the networks
  cannot be built from it."""
  method = config.method
  if method not in METHOD_MODELS:
    raise ConfigError(f'method={method!r} is unknown; known methods: {sorted(METHOD_MODELS)}')
  size = int(config.data.image_size)
  if config.data.num_channels < 1:
    raise ConfigError(f'data.num_channels={config.data.num_channels} must be >= 1')
  name = config.model.name
  if name not in REVERSE_MODELS:
    raise ConfigError(f'model.name={name!r} is unknown; known reverse models: '
                      f'{sorted(REVERSE_MODELS)}')
  if name != METHOD_MODELS[method]:
    raise ConfigError(f'model.name={name!r} does not fit method={method!r}, which needs '
                      f'model.name={METHOD_MODELS[method]!r}')
  for section in ('vae', 'model'):
    if config[section].get('dtype', 'float32') not in COMPUTE_DTYPES:
      raise ConfigError(f'{section}.dtype={config[section].dtype!r} is unknown; known: '
                        f'{list(COMPUTE_DTYPES)}')
  levels = len(config.model.ch_mult) - 1
  if levels < 0:
    raise ConfigError('model.ch_mult must have at least one entry')
  if size % 2 ** levels:
    raise ConfigError(
        f'data.image_size={size} is not divisible by 2**(len(model.ch_mult)-1)={2 ** levels} '
        f'(model.ch_mult={tuple(config.model.ch_mult)}): the U-Net downsamples {levels} times')
  if name == 'thead_unet':
    if config.model.num_heads != config.diffusion.num_steps:
      raise ConfigError(f'model.num_heads={config.model.num_heads} must equal '
                        f'diffusion.num_steps={config.diffusion.num_steps} (one head per step)')
    if config.model.get('residual_heads', False) and config.diffusion.target != 'x0':
      raise ConfigError(f"model.residual_heads=True needs diffusion.target='x0' (the heads then "
                        f"predict a correction to the VAE's clean image), got "
                        f"diffusion.target={config.diffusion.target!r}")
    if config.model.head_ch < 1 or config.model.head_num_res_blocks < 0:
      raise ConfigError(f'model.head_ch={config.model.head_ch} must be >= 1 and '
                        f'model.head_num_res_blocks={config.model.head_num_res_blocks} >= 0')
  if method == 'pixel_aware':
    if config.vae.name not in VAES:
      raise ConfigError(f'vae.name={config.vae.name!r} is unknown; known VAEs: {sorted(VAES)}')
    vlevels = len(config.vae.ch_mult) - 1
    if vlevels < 0:
      raise ConfigError('vae.ch_mult must have at least one entry')
    if size != BOTTLENECK_SIZE * 2 ** vlevels:
      need = math.log2(size / BOTTLENECK_SIZE) if size >= BOTTLENECK_SIZE else -1.0
      hint = (f'use len(vae.ch_mult)={int(need) + 1}' if need >= 0 and need.is_integer()
              else 'data.image_size must be 4 * 2**k')
      reached = size / 2 ** vlevels
      raise ConfigError(
          f'vae.ch_mult={tuple(config.vae.ch_mult)} downsamples data.image_size={size} '
          f'{vlevels} times (len(vae.ch_mult)-1) to {reached:g}x{reached:g}, but the VAE needs '
          f'a {BOTTLENECK_SIZE}x{BOTTLENECK_SIZE} bottleneck: {hint}')


def build_vae(config: ml_collections.ConfigDict) -> ScaleVAE:
  """The scale estimator named by ``config.vae.name`` (config validated first)."""
  validate_config(config)
  v = config.vae
  return VAES[v.name](ch=v.ch, ch_mult=tuple(v.ch_mult), num_res_blocks=v.num_res_blocks,
                      latent_dim=v.latent_dim, out_ch=config.data.num_channels,
                      gamma=float(config.diffusion.gamma), eps=float(config.diffusion.eps),
                      num_groups=v.num_groups, dtype=compute_dtype(v))


def build_reverse_model(config: ml_collections.ConfigDict) -> Union[THeadUNet, UNet]:
  """The reverse model named by ``config.model.name`` (config validated first)."""
  validate_config(config)
  m = config.model
  common = dict(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                out_ch=config.data.num_channels, attn_resolutions=tuple(m.attn_resolutions),
                dropout=float(m.dropout), num_groups=m.num_groups, dtype=compute_dtype(m))
  if m.name == 'thead_unet':
    return THeadUNet(num_heads=int(m.num_heads), gamma=float(config.diffusion.gamma),
                     head_ch=m.head_ch, head_num_res_blocks=m.head_num_res_blocks,
                     head_attention=bool(m.head_attention),
                     residual=bool(m.get('residual_heads', False)), **common)
  return UNet(**common)


def init_params(module: nn.Module, config: ml_collections.ConfigDict, rng: jax.Array,
                batch_size: int = 1) -> dict:
  """Initial ``'params'`` of ``module`` (one built by this package) for ``config``'s images."""
  s, c = config.data.image_size, config.data.num_channels
  x = jnp.zeros((batch_size, s, s, c), jnp.float32)
  i = jnp.ones((batch_size,), jnp.int32)
  if isinstance(module, ScaleVAE):
    variables = module.init({'params': rng}, x, i, sample_posterior=False)
  elif isinstance(module, THeadUNet):
    variables = module.init({'params': rng}, x, jnp.ones_like(x), i, train=False)
  elif isinstance(module, UNet):
    variables = module.init({'params': rng}, x, i, train=False)
  else:
    raise TypeError(f'init_params does not know module {type(module).__name__}')
  return variables['params']


def random_params(module: nn.Module, config: ml_collections.ConfigDict, seed: int = 0) -> dict:
  """Parameters of ``module`` drawn in NumPy like Flax's default initialisers, without compiling.

  Kernels LeCun-normal (std ``1/sqrt(fan_in)``; the stacked heads' leading axis is not part of
  the fan-in), biases 0, GroupNorm scales 1. For speed measurements and tests of networks whose
  values do not matter: ``jax.jit(init_params)`` compiles XLA's random number generator for
  every parameter, which takes minutes for the paper's networks on a CPU.
  """
  shapes = jax.eval_shape(lambda k: init_params(module, config, k), jax.random.key(0))
  rs = np.random.RandomState(seed)

  def init(path, leaf):
    keys = [getattr(p, 'key', None) for p in path]
    shape = leaf.shape
    if keys[-1] == 'kernel':
      lead = 1 if 'heads' in keys else 0
      fan_in = math.prod(shape[lead:-1])
      return jnp.asarray(rs.standard_normal(shape) / math.sqrt(fan_in), jnp.float32)
    if keys[-1] == 'scale':
      return jnp.ones(shape, jnp.float32)
    if keys[-1] == 'bias':
      return jnp.zeros(shape, jnp.float32)
    raise ValueError(f'random_params: unexpected parameter {"/".join(map(str, keys))}')

  return jax.tree_util.tree_map_with_path(init, shapes)


def count_params(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter count of every network of ``config``, via ``jax.eval_shape`` (no allocation).

  Returns:
    ``{'vae': n, 'reverse_model': n, 'total': n}``; no ``'vae'`` entry when
    ``config.method == 'ddpm'``.
  """
  validate_config(config)
  modules = {'reverse_model': build_reverse_model(config)}
  if config.method != 'ddpm':
    modules = {'vae': build_vae(config), **modules}
  counts = {}
  for name, module in modules.items():
    shapes = jax.eval_shape(lambda key, m=module: init_params(m, config, key), jax.random.key(0))
    counts[name] = int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))
  counts['total'] = sum(counts.values())
  return counts


def vae_estimate_scale(vae: ScaleVAE, vae_params, x_i: Float[Array, 'B H W C'],
                       i: Float[ArrayLike, 'B']) -> Float[Array, 'B H W C']:
  """``G(x_i, i)``: the deterministic scale estimate (posterior mean decoded), in ``(0, 1]``."""
  return vae.apply({'params': vae_params}, x_i, i, sample_posterior=False)[0]


def vae_decode_prior(vae: ScaleVAE, vae_params, rng: jax.Array, batch_size: int, *,
                     num_steps: int) -> Float[Array, 'B H W C']:
  """Decodes prior samples ``z ~ N(0, I)`` at step ``i = num_steps`` (T) into ``x_delta_hat``."""
  z = jax.random.normal(rng, (batch_size, vae.latent_dim), jnp.float32)
  i = jnp.full((batch_size,), num_steps, jnp.int32)
  return vae.apply({'params': vae_params}, z, i, method='decode')
