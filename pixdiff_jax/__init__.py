"""pixdiff_jax: pixel-aware accelerated reverse diffusion in JAX/Flax.

Public API (docs/design.md section 1, "Public functions")::

    from pixdiff_jax import schedules, samplers
    pixdiff_jax.get_sample_fn(config, *, batch_size, sampler='pixel_aware', **overrides)
    pixdiff_jax.load_sampler(workdir, **overrides)
"""
from pixdiff_jax.diffusion import samplers, schedules

__version__ = '0.1.0'


def __getattr__(name):
  # The sampling front end pulls in Flax models and Orbax; import it on first use only.
  if name in ('get_sample_fn', 'load_sampler'):
    from pixdiff_jax import sampling
    return getattr(sampling, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = ['schedules', 'samplers', 'get_sample_fn', 'load_sampler', '__version__']
