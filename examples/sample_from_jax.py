"""Calling the pixel-aware sampler from your own JAX code.

    python examples/sample_from_jax.py                         # the main job's runs/fmnist
    python examples/sample_from_jax.py --workdir runs/smoke --batch_size 4 --num_keys 3
    python examples/sample_from_jax.py --presets distilled     # the distilled student only

Shows the three things a researcher does with ``sample_fn``:

1. load a trained workdir (``pixdiff_jax.load_sampler``) and ``jax.jit`` the sampler;
2. ``jax.vmap`` it over PRNG keys: ``num_keys`` independent batches in one compiled call;
3. use the images inside another jitted function (here a made-up "score" that reduces the
   images on the device, as a metric or a downstream model would), so generation and its
   consumer compile into one XLA program with no host round trip.

``sample_fn(variables, key)`` is pure: images depend only on the key, so the vmapped batch for
key ``k`` is the jitted call with key ``k`` (up to float32 rounding of batched convolutions).

It does this for the workdir's own sampler and, when the workdir has a distill stage, for the
distilled presets ``distilled`` (one network call) and ``distilled_K2`` (two), which
``load_sampler`` builds with the student's parameters (``--presets`` picks which).
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import pixdiff_jax


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', default='runs/fmnist', help='a trained workdir')
  parser.add_argument('--batch_size', type=int, default=8, help='images per key')
  parser.add_argument('--num_keys', type=int, default=4, help='keys to vmap over')
  parser.add_argument('--presets', default='',
                      help="comma-separated: 'config' (the workdir's sampler), 'distilled', "
                           "'distilled_K2'; default: config, plus the distilled ones if the "
                           'workdir has a distill stage')
  args = parser.parse_args(argv)
  presets = [p for p in args.presets.split(',') if p] or ['config'] + (
      ['distilled', 'distilled_K2'] if has_distill_stage(args.workdir) else [])
  result = {}
  for preset in presets:
    # 1. The sampler of the workdir (its stored config and sampler settings, EMA parameters);
    # a preset name swaps in that preset's settings (and, distilled, the student's parameters).
    overrides = {} if preset == 'config' else {'preset': preset}
    sample_fn, variables = pixdiff_jax.load_sampler(args.workdir, batch_size=args.batch_size,
                                                    **overrides)
    stats = demo(sample_fn, variables, args.num_keys)
    result = result or dict(stats)  # the first preset's numbers at the top level
    result.setdefault('presets', {})[preset] = stats
  print(json.dumps(result, indent=2))
  return result


def has_distill_stage(workdir: str) -> bool:
  directory = os.path.join(workdir, 'checkpoints', 'distill')
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def demo(sample_fn, variables, num_keys: int) -> dict:
  """jit, vmap over keys and use inside another jitted function; returns what it measured."""
  sample = jax.jit(sample_fn)
  keys = jax.random.split(jax.random.PRNGKey(0), num_keys)
  one = sample(variables, keys[0])                        # float32 [B, H, W, C] in [0, 1]

  # 2. vmap over keys: variables are shared (in_axes None), keys batched.
  sample_many = jax.jit(jax.vmap(sample_fn, in_axes=(None, 0)))
  many = sample_many(variables, keys)                     # float32 [K, B, H, W, C]

  # 3. The images inside another jitted function: generate and reduce in one program.
  @jax.jit
  def generate_and_score(variables, key):
    images = sample_fn(variables, key)                    # traced, never leaves the device
    brightness = images.mean(axis=(1, 2, 3))              # [B]
    flat = images.reshape(images.shape[0], -1)
    diversity = jnp.mean(jnp.abs(flat[:, None] - flat[None]))  # mean pairwise L1 distance
    return brightness, diversity

  brightness, diversity = generate_and_score(variables, keys[0])

  return {
      'image_shape': list(one.shape),
      'vmapped_shape': list(many.shape),
      'network_evals_per_call': int(sample_fn.network_evals),
      'min': float(many.min()), 'max': float(many.max()),
      # the vmapped batch of key 0 against the single call with key 0
      'max_abs_diff_vmap_vs_jit': float(jnp.max(jnp.abs(many[0] - one))),
      # the fused program's statistics against the same ones computed from `one` on the host
      'mean_brightness': float(brightness.mean()),
      'mean_brightness_host': float(np.asarray(one).mean()),
      'diversity': float(diversity),
  }


if __name__ == '__main__':
  main()
