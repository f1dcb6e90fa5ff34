"""Compile time and steady-state speed of each training stage of a config, on this machine.

    python benchmarks/train_speed.py --config configs/fashion_mnist.py [--steps 5]

Prints one JSON line per stage: seconds to compile, seconds per train step (median over
``--steps`` dispatches of ``training.steps_per_dispatch`` steps each) and images per second.
"""
from __future__ import annotations

import json
import time

import flax.jax_utils
import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from pixdiff_jax import train
from pixdiff_jax.train_state import create_train_state, make_optimizer

config_flags.DEFINE_config_file('config', None, 'config file', lock_config=True)
flags.DEFINE_integer('steps', 5, 'timed dispatches per stage')
flags.DEFINE_list('stages', [], 'only these stages (default: all)')
FLAGS = flags.FLAGS


def main(_):
  config = FLAGS.config
  t = config.training
  vae_params = None
  for name in train.stages_for(config):
    if FLAGS.stages and name not in FLAGS.stages:
      continue
    stage = train.build_stage(config, name, vae_params=vae_params)
    tx = make_optimizer(config.optim)
    params = stage.init_params(jax.random.PRNGKey(0))
    if name == 'vae':
      vae_params = params
    state = flax.jax_utils.replicate(create_train_state(params, tx))
    aux = flax.jax_utils.replicate(stage.aux)
    step = train.get_p_train_step(stage.loss_fn, tx, ema_decay=t.ema_decay,
                                  ema_warmup=t.ema_warmup)
    d = jax.local_device_count()
    k = t.steps_per_dispatch
    shape = (d, k, t.batch_size // d, config.data.image_size, config.data.image_size,
             config.data.num_channels)
    x0 = np.random.default_rng(0).uniform(0.004, 1.0, shape).astype(np.float32)
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    state, m = step(state, x0, key, aux)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(FLAGS.steps):
      t0 = time.perf_counter()
      state, m = step(state, x0, key, aux)
      jax.block_until_ready(m)
      times.append((time.perf_counter() - t0) / k)
    sec = float(np.median(times))
    print(json.dumps({'stage': name, 'devices': d, 'batch_size': t.batch_size,
                      'steps_per_dispatch': k, 'first_call_s': round(compile_s, 2),
                      'sec_per_step': round(sec, 4),
                      'images_per_sec': round(t.batch_size / sec, 1)}))


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
