"""utils.flops: matrix FLOPs counted on the jaxpr agree with XLA's CPU cost analysis."""
import jax
import jax.numpy as jnp
import pytest

from pixdiff_jax.utils import flops


def _conv(x, w, stride=1):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _xla_cpu_flops(fn, *args):
  return jax.jit(fn).lower(*args).compile().cost_analysis()['flops']


def test_dot_and_conv_by_hand():
  a, b = jnp.ones((3, 64, 32)), jnp.ones((3, 50, 32))
  assert flops.matmul_flops(lambda a, b: jnp.einsum('bqc,bkc->bqk', a, b), a, b) == (
      2 * 3 * 64 * 50 * 32)
  x, w = jnp.ones((4, 16, 16, 8)), jnp.ones((3, 3, 8, 12))
  # 'SAME' 3x3 stride 1: per output row/column 16*3 - 2 taps meet real pixels (edges pad).
  assert flops.matmul_flops(_conv, x, w) == 2 * 4 * 12 * 8 * (16 * 3 - 2) ** 2


@pytest.mark.parametrize('stride', [1, 2])
def test_gradient_of_a_strided_conv_matches_xla_cpu(stride):
  """The backward convolutions (input dilation, window reversal) count the products XLA:CPU
  counts; XLA adds the elementwise work (here the squares), under 1%."""
  x, w = jnp.ones((4, 16, 16, 8)), jnp.ones((3, 3, 8, 12))
  fn = jax.grad(lambda x, w: jnp.sum(_conv(x, w, stride) ** 2), argnums=(0, 1))
  ours, xla = flops.matmul_flops(fn, x, w), _xla_cpu_flops(fn, x, w)
  assert 0.99 * xla <= ours <= xla


def test_scan_counts_every_iteration_and_jit_is_entered():
  a, b = jnp.ones((8, 32)), jnp.ones((32, 32))
  body = jax.jit(lambda c: c @ b)
  fn = lambda a: jax.lax.scan(lambda c, _: (body(c), None), a, None, length=5)[0]
  assert flops.matmul_flops(fn, a) == 5 * 2 * 8 * 32 * 32
  # (XLA's cost analysis counts a loop body once: 1/5 of it.)
