"""XLA's memory plan of a compiled train step, and the check that the step fits the device.

* :class:`MemoryPlan` / :func:`plan_of`: XLA's buffer plan of a compiled step
  (``compiled.memory_analysis()``); ``training.memory_plan`` makes one per stage of a config
  for ``python main.py --config C --mode info``.
* :class:`FitCheckedStep` wraps the trainer's step: at its first call with a new argument shape
  it compiles ahead of time, compares the plan with the device's memory and raises
  :class:`DoesNotFitError` (a ``ValueError``: the command line prints one ``error:`` line) naming
  the config fields to change; an out-of-memory error of the runtime becomes the same line.

The device's memory is ``device.memory_stats()['bytes_limit']`` where JAX reports it (GPU,
TPU); on the CPU, the host's physical memory shared by its devices; ``training.memory_limit_gib
> 0`` overrides both (e.g. to check a config for a 24 GB card elsewhere). XLA:CPU's plans ran
1.55x (all-heads reverse step) to 2.4x (one-head baseline) the H200's numbers for the same steps
(docs/performance.md), so a plan made on a CPU is a cautious estimate for a GPU.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import ml_collections
from absl import logging

from pixdiff_jax.errors import UserError

PyTree = Any
GIB = float(2 ** 30)
# Warn (but run) when the plan takes more than this share of the device's memory.
WARN_FRACTION = 0.9


class DoesNotFitError(UserError, ValueError):
  """A stage's train step needs more memory than the device has; the message is one line."""


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """XLA's buffer plan of one compiled train step (per device), in bytes."""
  stage: str
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  compile_seconds: float

  @property
  def total_bytes(self) -> int:
    """Arguments + outputs + temporaries - what the outputs reuse of the (donated) arguments."""
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

  @property
  def gib(self) -> float:
    return self.total_bytes / GIB

  def describe(self) -> str:
    return (f'{format_bytes(self.total_bytes)} (arguments {format_bytes(self.argument_bytes)}, '
            f'temporaries {format_bytes(self.temp_bytes)})')


def format_bytes(n: float) -> str:
  """``'14.7 GiB'``, ``'93.2 MiB'``."""
  return f'{n / GIB:.1f} GiB' if n >= GIB / 10 else f'{n / 2 ** 20:.1f} MiB'



def plan_of(compiled, stage: str, compile_seconds: float) -> MemoryPlan:
  """The :class:`MemoryPlan` of a ``jax.stages.Compiled`` step."""
  m = compiled.memory_analysis()
  if isinstance(m, (list, tuple)):  # older jax: one entry per device program
    m = m[0]
  return MemoryPlan(stage, int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                    int(m.temp_size_in_bytes), int(m.alias_size_in_bytes), compile_seconds)


# ---------------------------------------------------------------------------- device memory
def device_memory_bytes(config: ml_collections.ConfigDict | None = None) -> tuple[int, str] | None:
  """``(bytes, what)`` one local device may use, or None where nothing is known.

  ``training.memory_limit_gib > 0`` wins; then ``memory_stats()['bytes_limit']`` (GPU, TPU);
  then, on the CPU, the host's physical memory divided by the local devices.
  """
  limit = float(config.training.get('memory_limit_gib', 0) or 0) if config is not None else 0.0
  if limit > 0:
    return int(limit * GIB), f'training.memory_limit_gib={limit:g}'
  dev = jax.local_devices()[0]
  try:
    stats = dev.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    stats = {}
  if stats.get('bytes_limit'):
    return int(stats['bytes_limit']), f'{dev.platform}:{dev.id} ({dev.device_kind})'
  if dev.platform == 'cpu':
    try:
      host = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError, AttributeError):
      return None
    n = jax.local_device_count()
    return host // n, 'host memory' + (f' / {n} CPU devices' if n > 1 else '')
  return None


def _levers(config: ml_collections.ConfigDict, stage: str) -> str:
  """The config fields that lower a stage's memory, with their current values."""
  t, d = config.training, config.diffusion
  net = 'vae' if stage == 'vae' else 'model'
  parts = [f'training.batch_size (now {t.batch_size} over {jax.device_count()} device(s); '
           f'more devices split it)']
  if stage == 'reverse':
    n = d.get('heads_per_example', 0)
    if n == 0 or n > 2:
      parts.append(f'diffusion.heads_per_example=2 (now {n}{", all heads" if n == 0 else ""})')
  if config[net].get('dtype', 'float32') == 'float32':
    parts.append(f'{net}.dtype=bfloat16 (on a GPU/TPU)')
  return ', '.join(parts)


def check_fits(plan: MemoryPlan, config: ml_collections.ConfigDict) -> None:
  """Raises :class:`DoesNotFitError` if ``plan`` exceeds the device's memory; warns near it."""
  known = device_memory_bytes(config)
  if known is None:
    return
  limit, what = known
  if plan.total_bytes > limit:
    raise DoesNotFitError(
        f'stage {plan.stage} does not fit: its train step needs {plan.describe()} per device '
        f'(XLA\'s plan), more than the {format_bytes(limit)} of {what}; lower '
        f'{_levers(config, plan.stage)}')
  if plan.total_bytes > WARN_FRACTION * limit:
    logging.warning('stage %s: the train step needs %s per device, %.0f%% of the %s of %s; it '
                    'may not fit. To lower it: %s', plan.stage, plan.describe(),
                    100 * plan.total_bytes / limit, format_bytes(limit), what,
                    _levers(config, plan.stage))


def _is_out_of_memory(err: Exception) -> bool:
  text = str(err)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text


class FitCheckedStep:
  """The trainer's step, compiled ahead of time and checked against the device's memory.

  ``FitCheckedStep(step, config, stage)(state, block, key, aux)``: at the first call with a new
  block shape, ``step.lower(...).compile()`` (the persistent compilation cache applies), then
  :func:`check_fits`; every call runs the compiled executable. An out-of-memory error while
  running becomes :class:`DoesNotFitError` with the same advice.

  In a multi-process job the step runs as ``step(...)`` with no check before it: the pmapped
  step's compiled executable wants global arrays, which only the step itself makes from the local
  ones, and compiling it a second time just for the plan would double the compile time (pmap
  executables were not written to the persistent cache in a 2-process CPU run). Running out of
  memory there still ends in the one line.
  """

  def __init__(self, step: Callable, config: ml_collections.ConfigDict, stage: str):
    self._step, self._config, self._stage = step, config, stage
    self._compiled: dict[tuple, Any] = {}
    self.plans: list[MemoryPlan] = []

  def __call__(self, state, block, key, aux):
    if jax.process_count() > 1:
      return self._run(self._step, state, block, key, aux)
    # block: an array [D, k, b, ...] or, for the distill stage, a dict of such arrays
    sig = (jax.tree_util.tree_structure(block),
           tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree_util.tree_leaves(block)))
    compiled = self._compiled.get(sig)
    if compiled is None:
      t0 = time.perf_counter()
      try:
        compiled = self._step.lower(state, block, key, aux).compile()
      except Exception as err:  # pylint: disable=broad-except
        if _is_out_of_memory(err):
          raise self._oom(err) from None
        raise
      plan = plan_of(compiled, self._stage, time.perf_counter() - t0)
      self.plans.append(plan)
      logging.info('stage %s: train step compiled in %.1f s; XLA plans %s per device',
                   self._stage, plan.compile_seconds, plan.describe())
      check_fits(plan, self._config)
      self._compiled[sig] = compiled
    return self._run(compiled, state, block, key, aux)

  def _run(self, fn, *args):
    try:
      return fn(*args)
    except Exception as err:  # pylint: disable=broad-except
      if _is_out_of_memory(err):
        raise self._oom(err) from None
      raise

  def _oom(self, err: Exception) -> DoesNotFitError:
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    planned = f' (XLA planned {self.plans[-1].describe()})' if self.plans else ''
    return DoesNotFitError(
        f'stage {self._stage} ran out of device memory{planned}: {first}; lower '
        f'{_levers(self._config, self._stage)}')
