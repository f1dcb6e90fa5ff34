"""Helpers shared by the speed benchmarks (``sampling.py``, ``training.py``): timing of compiled
functions, XLA's cost and memory analyses, peak memory, the device's name, table and JSON output."""
from __future__ import annotations

import json
import os
import resource
import statistics
import time
from typing import Any, Callable, Sequence

import jax


# Dense (no sparsity) matrix peaks in TFLOP/s by the vendors' datasheets, first match of the
# device kind wins (so 'A100' before 'A10'). 'float32' is the TF32 tensor-core peak: under JAX's
# default matmul precision XLA runs float32 convolutions and matmuls on TF32 tensor cores on
# these cards (the H200's one-head CIFAR-10 step reached 106 TFLOP/s in float32, above the 67
# TFLOP/s of its non-tensor FP32 units).
PEAK_TFLOPS = (
    ('H100 PCIe', {'bfloat16': 756.0, 'float32': 378.0}),
    ('H100', {'bfloat16': 989.4, 'float32': 494.7}),
    ('H200', {'bfloat16': 989.4, 'float32': 494.7}),
    ('A100', {'bfloat16': 312.0, 'float32': 156.0}),
    ('L40S', {'bfloat16': 362.0, 'float32': 183.0}),
    ('A10', {'bfloat16': 125.0, 'float32': 62.5}),
    ('L4', {'bfloat16': 121.0, 'float32': 60.0}),
    ('RTX 4090', {'bfloat16': 165.2, 'float32': 82.6}),
    ('RTX 3090', {'bfloat16': 71.0, 'float32': 35.6}),
)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The card's dense matrix peak for a compute dtype (``PEAK_TFLOPS``), None if unknown."""
  for name, peaks in PEAK_TFLOPS:
    if name in device_kind:
      return peaks.get(dtype)
  return None


def device_name() -> str:
  """E.g. ``'gpu: NVIDIA H100 80GB HBM3 x1'`` or ``'cpu: cpu x1'``."""
  devs = jax.local_devices()
  return f'{devs[0].platform}: {devs[0].device_kind} x{len(devs)}'


def compile_timed(jitted, *args) -> tuple[Any, float]:
  """``(compiled, seconds)``: ``jitted.lower(*args).compile()`` and its wall time (tracing,
  lowering and XLA compilation; no persistent compilation cache is configured here)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def median_seconds(call: Callable[[int], Any], repeats: int, warmup: int = 1) -> float:
  """Median wall time of ``call(r)`` (``r = 0..repeats-1``) after ``warmup`` untimed calls;
  ``jax.block_until_ready`` is applied to every result."""
  for w in range(warmup):
    jax.block_until_ready(call(-1 - w))
  times = []
  for r in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(call(r))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def flops(compiled) -> float | None:
  """XLA's FLOP count of one call of ``compiled`` (``compiled.cost_analysis()``), or None."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    return None
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def xla_memory_bytes(compiled) -> int | None:
  """Bytes XLA plans for one call (arguments + outputs + temporaries - aliased), or None."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


def peak_memory_bytes() -> int:
  """Peak memory of this process so far: the accelerator's ``peak_bytes_in_use`` on a GPU/TPU,
  the host's peak resident set size (``ru_maxrss``) on the CPU."""
  dev = jax.local_devices()[0]
  if dev.platform != 'cpu':
    stats = dev.memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
      return int(stats['peak_bytes_in_use'])
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    if v == 0 or 1e-3 <= abs(v) < 1e5:
      return f'{v:.4g}'
    return f'{v:.3e}'
  return '-' if v is None else str(v)


def print_table(rows: Sequence[dict], columns: Sequence[str], title: str = '') -> None:
  """Prints ``rows`` as a Markdown table with the given ``columns``."""
  if title:
    print(title)
  print('| ' + ' | '.join(columns) + ' |')
  print('|' + '---|' * len(columns))
  for row in rows:
    print('| ' + ' | '.join(_fmt(row.get(c)) for c in columns) + ' |')


def write_json(rows: Sequence[dict], path: str | None, quiet: bool = False) -> None:
  """Writes ``rows`` as a JSON list to ``path`` (directories created); nothing if ``path`` is
  empty."""
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(list(rows), f, indent=1)
  if not quiet:
    print(f'wrote {path}')
