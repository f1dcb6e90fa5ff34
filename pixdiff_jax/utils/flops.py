"""Matrix FLOPs of a JAX function, counted on its jaxpr: the same number on every backend.

XLA's ``compiled.cost_analysis()`` depends on the backend: on a GPU the convolutions become
cuDNN custom calls that it does not count (the cifar10 one-head train step: 126.5 GFLOP on the
H200 against 4,489 on the CPU compile of the same step). :func:`matmul_flops` counts
``dot_general`` and ``conv_general_dilated`` exactly (2 per multiply-add, only the products that
meet real input values: padding and dilation holes excluded, as XLA's CPU cost analysis does),
through every nested jaxpr (``jit``, ``custom_vjp``, ``remat``; a ``scan`` body times its
length). Elementwise work (normalisation, activations, the optimiser) is not counted: these are
the "model FLOPs" of model FLOP utilisation (MFU = matmul FLOPs per second / the card's dense
matrix peak).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core

__all__ = ['matmul_flops', 'jaxpr_matmul_flops']


def _dot_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lc, rc), (lb, _) = eqn.params['dimension_numbers']
  contract = math.prod(lhs[d] for d in lc)
  batch = math.prod(lhs[d] for d in lb)
  lhs_free = math.prod(s for d, s in enumerate(lhs) if d not in lc and d not in lb)
  rhs_free = math.prod(s for d, s in enumerate(rhs) if d not in rc and d not in (
      eqn.params['dimension_numbers'][1][1]))
  return 2 * batch * lhs_free * rhs_free * contract


def _valid_pairs(in_size: int, out_size: int, k_size: int, stride: int, pad_lo: int,
                 lhs_dil: int, rhs_dil: int) -> int:
  """Number of (output position, kernel tap) pairs of one spatial dimension that read a real
  input value (not padding, not a hole of the input dilation)."""
  dilated = (in_size - 1) * lhs_dil + 1
  count = 0
  for o in range(out_size):
    for k in range(k_size):
      pos = o * stride + k * rhs_dil - pad_lo
      if 0 <= pos < dilated and pos % lhs_dil == 0:
        count += 1
  return count


def _conv_flops(eqn) -> int:
  p = eqn.params
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  out = eqn.outvars[0].aval.shape
  dn = p['dimension_numbers']
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  n_sp = len(lhs_spec) - 2
  lhs_dil = p.get('lhs_dilation') or (1,) * n_sp
  rhs_dil = p.get('rhs_dilation') or (1,) * n_sp
  pairs = 1
  for d in range(n_sp):
    pairs *= _valid_pairs(lhs[lhs_spec[2 + d]], out[out_spec[2 + d]], rhs[rhs_spec[2 + d]],
                          p['window_strides'][d], p['padding'][d][0], lhs_dil[d], rhs_dil[d])
  # Per output (batch, feature) pair: the kernel's input features at every valid tap.
  out_bf = out[out_spec[0]] * out[out_spec[1]]
  in_features = rhs[rhs_spec[1]]
  return 2 * out_bf * in_features * pairs * int(p.get('batch_group_count', 1))


def _sub_jaxprs(value) -> list:
  if isinstance(value, jex_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jex_core.Jaxpr):
    return [value]
  if isinstance(value, (list, tuple)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def jaxpr_matmul_flops(jaxpr) -> int:
  """Matrix FLOPs of a (closed) jaxpr; ``cond`` counts its costliest branch."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_flops(eqn)
    elif name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    elif name == 'cond':
      total += max(jaxpr_matmul_flops(b) for b in eqn.params['branches'])
    else:
      inner = sum(jaxpr_matmul_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
      total += inner * int(eqn.params.get('length', 1)) if name == 'scan' else inner
  return total


def matmul_flops(fn: Callable, *args: Any, **kwargs: Any) -> int:
  """Matrix FLOPs of one call ``fn(*args, **kwargs)`` (arrays or ``jax.ShapeDtypeStruct``s);
  traced only, nothing is compiled or run."""
  return jaxpr_matmul_flops(jax.make_jaxpr(fn, **kwargs)(*args))
