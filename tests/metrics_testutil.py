"""Random, deterministic weights in pytorch-fid's Inception state-dict layout (tests and
tests/data/make_inception_fixture.py share them, so the fixture needs no weight file)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pixdiff_jax.metrics import inception

_FLAX_TO_TORCH = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
                  ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
                  ('batch_stats', 'var'): 'running_var'}


def inception_torch_shapes() -> dict[str, tuple[int, ...]]:
  """torch parameter name -> torch shape, for every variable of FIDInceptionV3 plus ``fc``."""
  tree = jax.eval_shape(lambda: inception.FIDInceptionV3().init(
      jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3), jnp.float32)))
  shapes = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    keys = [str(k.key) for k in path]
    collection, *modules, name = keys
    shape = tuple(leaf.shape)
    if name == 'kernel':
      shape = (shape[3], shape[2], shape[0], shape[1])
    shapes['.'.join(modules + [_FLAX_TO_TORCH[(collection, name)]])] = shape
  shapes['fc.weight'], shapes['fc.bias'] = (1008, 2048), (1008,)
  return shapes


def random_inception_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """He-normal conv kernels and moderate batch-norm statistics (activations stay O(1) through
  the 94 layers), drawn in sorted-name order from ``np.random.default_rng(seed)``; float32."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in sorted(inception_torch_shapes().items()):
    if name.endswith('conv.weight') or name == 'fc.weight':
      fan_in = int(np.prod(shape[1:]))
      v = rng.normal(size=shape) * np.sqrt(2.0 / fan_in)
    elif name.endswith('bn.weight') or name.endswith('running_var'):
      v = rng.uniform(0.5, 1.5, size=shape)
    else:  # bn.bias, running_mean, fc.bias
      v = rng.normal(size=shape) * 0.1
    out[name] = v.astype(np.float32)
  return out
