"""XLA's memory plan of each stage of a config: ``python main.py --config C --mode info``.

:func:`plan_stages` compiles each stage's train step for the local backend ahead of time, from
abstract shapes (nothing is initialised, allocated or run), as the trainer runs it, and reads
XLA's buffer plan (``lower(...).compile().memory_analysis()``), so "will this fit my card?" has
an answer before training. Training checks the same plan when it compiles the step
(``memory.FitCheckedStep``).
"""
from __future__ import annotations

import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from pixdiff_jax import models
from pixdiff_jax.config import stages_for
from pixdiff_jax.training import builders, memory, steps
from pixdiff_jax.training.state import create_train_state, make_optimizer

PyTree = Any
# Nothing runs the executable: on the CPU, skip LLVM's optimisations (the buffer plan comes from
# XLA's HLO passes; it was the same to the byte for all four paper-config stages, in about half
# the compile time). The fusion emitters are XLA's default whatever XLA_FLAGS says (the test
# suite turns them off): the plan changes with them, and compiles slower without them. Newer
# XLA (jaxlib 0.11.2) has only these emitters and no such option: it is left out there.
_PLAN_ONLY_CPU_OPTIONS = {'xla_backend_optimization_level': 0,
                          'xla_llvm_disable_expensive_passes': True,
                          'xla_cpu_use_fusion_emitters': True}
_OPTIONAL_CPU_OPTIONS = ('xla_cpu_use_fusion_emitters',)


@functools.cache
def _cpu_option_known(name: str, value: Any) -> bool:
  """Whether this XLA:CPU accepts the compile option ``name`` (a trivial program, compiled once)."""
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32)).compile(
        compiler_options={name: value})
  except Exception as err:  # pylint: disable=broad-except
    if 'No such compile option' in str(err):
      return False
    raise
  return True


def plan_only_options() -> dict[str, Any] | None:
  """The compile options of a plan-only compile on this backend (``None`` off the CPU)."""
  if jax.default_backend() != 'cpu':
    return None
  return {k: v for k, v in _PLAN_ONLY_CPU_OPTIONS.items()
          if k not in _OPTIONAL_CPU_OPTIONS or _cpu_option_known(k, v)}


def _abstract(tree: PyTree, lead: Sequence[int] = ()) -> PyTree:
  """ShapeDtypeStructs of ``tree``'s leaves with the axes ``lead`` in front."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(tuple(lead) + tuple(x.shape), x.dtype), tree)


def abstract_stage(config: ml_collections.ConfigDict, name: str):
  """``(stage, optimiser, state)`` of stage ``name`` with abstract shapes (``jax.eval_shape``:
  no parameter is initialised; the reverse stage's frozen VAE parameters are abstract too)."""
  vae_params = None
  if name == 'reverse':
    vae = models.build_vae(config)
    vae_params = jax.eval_shape(lambda k: models.init_params(vae, config, k), jax.random.key(0))
  stage = builders.build_stage(config, name, vae_params=vae_params)
  tx = make_optimizer(config.optim)
  state = jax.eval_shape(lambda k: create_train_state(stage.init_params(k), tx),
                         jax.random.PRNGKey(0))
  return stage, tx, state


def plan_stage(config: ml_collections.ConfigDict, name: str) -> memory.MemoryPlan:
  """Compiles stage ``name``'s train step (as the trainer runs it, one step per dispatch unless
  ``training.steps_per_dispatch`` says otherwise) from abstract shapes and returns XLA's plan."""
  t0 = time.perf_counter()
  stage, tx, state = abstract_stage(config, name)
  t = config.training
  n_dev = jax.local_device_count()
  step = steps.get_p_train_step(stage.loss_fn, tx, ema_decay=t.ema_decay,
                                ema_warmup=t.ema_warmup)
  s, c = config.data.image_size, config.data.num_channels
  block = jax.ShapeDtypeStruct((n_dev, t.steps_per_dispatch, t.batch_size // jax.device_count(),
                                s, s, c), jnp.float32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  lowered = step.lower(_abstract(state, (n_dev,)), block, key, _abstract(stage.aux, (n_dev,)))
  compiled = lowered.compile(compiler_options=plan_only_options())
  return memory.plan_of(compiled, name, time.perf_counter() - t0)


def plan_stages(config: ml_collections.ConfigDict) -> dict:
  """``--mode info``'s memory part: each stage's plan, the device and whether it fits.

  Returns ``{'memory_gib': {stage: GiB}, 'memory_plan': {...details...}}``.
  """
  # The distill stage trains the teacher's network on the teacher's pairs (it needs a trained
  # workdir to build): not planned here.
  plans = [plan_stage(config, name) for name in stages_for(config) if name != 'distill']
  dev = jax.local_devices()[0]
  known = memory.device_memory_bytes(config)
  detail = {
      'backend': dev.platform, 'device': dev.device_kind,
      'batch_per_device': config.training.batch_size // jax.device_count(),
      'compile_seconds': {p.stage: round(p.compile_seconds, 1) for p in plans},
      'device_memory_gib': None if known is None else round(known[0] / memory.GIB, 2),
      'fits': None if known is None else {p.stage: p.total_bytes <= known[0] for p in plans},
  }
  if dev.platform == 'cpu':
    detail['note'] = ('planned by XLA:CPU: for the same steps it ran 1.55x (all heads) to 2.4x '
                      '(one-head baseline) the H200\'s numbers (docs/performance.md)')
  return {'memory_gib': {p.stage: round(p.gib, 2) for p in plans}, 'memory_plan': detail}
