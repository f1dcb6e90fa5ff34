"""bfloat16 compute: the train step keeps parameters, optimiser state, gradients and loss in
float32 and computes its convolutions in bfloat16; on the CPU the command line says it is slow."""
import os

import jax
import jax.numpy as jnp

from pixdiff_jax import config as config_lib, models
from pixdiff_jax.training import memory_plan, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(dtype):
  config = config_lib.load_config_file(os.path.join(ROOT, 'configs', 'smoke.py'))
  config.diffusion.num_steps = 4
  config.model.dtype = config.vae.dtype = dtype
  return config


def _abstract_step(config, name):
  """(jaxpr, output shapes) of one traced train step of stage ``name`` (nothing compiled)."""
  stage, tx, state = memory_plan.abstract_stage(config, name)
  step = trainer.get_train_step(stage.loss_fn, tx, ema_decay=0.999, ema_warmup=True,
                                axis_name=None)
  x0 = jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32)
  args = (state, x0, jax.ShapeDtypeStruct((2,), jnp.uint32), stage.aux)
  return jax.make_jaxpr(step, return_shape=True)(*args)


def _conv_dtypes(jaxpr):
  out = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      out.add(eqn.invars[0].aval.dtype)
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (list, tuple)) else [v]):
        inner = getattr(sub, 'jaxpr', None)
        if inner is not None and hasattr(inner, 'eqns'):
          out |= _conv_dtypes(inner)
        elif hasattr(sub, 'eqns'):
          out |= _conv_dtypes(sub)
  return out


def test_bfloat16_train_step_keeps_float32_state_and_loss():
  for name in ('vae', 'reverse'):
    jaxpr, (state, metrics) = _abstract_step(_config('bfloat16'), name)
    floats = [x.dtype for x in jax.tree_util.tree_leaves((state.params, state.ema_params,
                                                          state.opt_state))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and set(floats) == {jnp.dtype('float32')}, name
    assert metrics['loss'].dtype == jnp.float32 and metrics['grad_norm'].dtype == jnp.float32
    assert jnp.dtype('bfloat16') in _conv_dtypes(jaxpr.jaxpr), name  # it computes in bf16
  jaxpr, _ = _abstract_step(_config('float32'), 'vae')
  assert _conv_dtypes(jaxpr.jaxpr) == {jnp.dtype('float32')}


def test_bfloat16_on_the_cpu_is_a_one_line_note():
  note = models.bfloat16_on_cpu_note(_config('bfloat16'))
  assert jax.default_backend() == 'cpu'
  assert note.startswith('vae.dtype=bfloat16 and model.dtype=bfloat16 on the CPU: slower than '
                         'float32') and '\n' not in note
  assert models.bfloat16_on_cpu_note(_config('float32')) is None
