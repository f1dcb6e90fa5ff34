"""Distillation pairs on the fly or cached? The teacher's seconds per pair against a student step.

    python benchmarks/distill_pairs.py [--config configs/fashion_mnist.py]
        [--ddpm_config configs/ddpm_fashion_mnist.py] [--teacher_batch N] [--repeats 3]
        [--set distill.heads_per_example=2,...] [--out FILE.json]

For each config (the pixel-aware main job and its same-budget DDPM baseline), with randomly
initialised networks (speed does not depend on the weights): the jitted teacher of the distill
stage (``training/distill.py``, ``get_teacher_fn``: pixel-aware, the VAE prior and the K = T
``consistent`` sampler with its trajectory; DDPM, DPM-Solver++(2M) with ``distill.teacher_steps``
steps) on ``distill.teacher_batch`` pairs, and the distill stage's train step
(``get_p_train_step`` of its loss: optimiser, EMA and all) on ``distill.batch_size`` pairs. Each
is compiled ahead of time; the median of ``--repeats`` calls after one warm-up is reported.

What the numbers decide: a pair made on the fly costs ``teacher_s_per_pair`` every time the
student sees it; cached, it costs that once and then ``distill.steps * batch / num_pairs`` uses.
``pair_in_student_steps`` is the teacher's cost of one batch of pairs in student steps: on the
fly, every student step would cost ``1 + pair_in_student_steps`` steps.
"""
from __future__ import annotations

import ast
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags

import bench_util
from pixdiff_jax import config as config_lib, models
from pixdiff_jax.training import distill, distill_loss, trainer
from pixdiff_jax.training.state import create_train_state, make_optimizer

flags.DEFINE_string('config', 'configs/fashion_mnist.py', 'the pixel-aware config')
flags.DEFINE_string('ddpm_config', 'configs/ddpm_fashion_mnist.py', "'' skips the DDPM rows")
flags.DEFINE_integer('teacher_batch', 0, '> 0 overrides distill.teacher_batch')
flags.DEFINE_integer('repeats', 3, 'timed calls (the median is reported)')
flags.DEFINE_list('set', [], 'config overrides section.field=value (Python literals), both configs')
flags.DEFINE_string('out', None, 'write the rows as a JSON list to this file')
FLAGS = flags.FLAGS

COLUMNS = ('method', 'teacher', 'teacher_batch', 'teacher_s_per_batch', 'teacher_s_per_pair',
           'student_batch', 'student_s_per_step', 'student_s_per_pair',
           'pair_in_student_steps', 'cache_s', 'on_the_fly_s', 'teacher_compile_s',
           'student_compile_s')


def _timed(call, repeats: int) -> float:
  jax.block_until_ready(call())  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _variables(config) -> dict:
  net = models.random_params(models.build_reverse_model(config), config, seed=1)
  if config.method == 'ddpm':
    return {'model': net}
  return {'vae': models.random_params(models.build_vae(config), config, seed=0), 'reverse': net}


def measure(config) -> dict:
  """One row: the teacher per batch of pairs and the student's train step."""
  dd = config.distill
  variables = _variables(config)
  key = jax.random.PRNGKey(0)
  teacher = jax.jit(distill.get_teacher_fn(config, int(dd.teacher_batch)))
  compiled, teacher_compile = bench_util.compile_timed(teacher, variables, key)
  teacher_s = _timed(lambda: compiled(variables, key), FLAGS.repeats)
  pairs = jax.device_get(compiled(variables, key))

  # The student's step on a batch cut from those pairs, as the stage runs it.
  student = 'model' if config.method == 'ddpm' else 'reverse'
  loss = distill_loss.get_distill_loss_fn(config, models.build_reverse_model(config))
  optim = config.optim.to_dict()
  optim.update(lr=float(dd.lr), warmup_steps=int(dd.warmup_steps))
  tx = make_optimizer(ml_collections.ConfigDict(optim))
  state = jax.jit(lambda p: create_train_state(p, tx))(variables[student])
  step = trainer.get_p_train_step(lambda p, x, r, aux: loss(p, x, r, train=True), tx,
                                  ema_decay=config.training.ema_decay, ema_warmup=True)
  d, b = jax.local_device_count(), int(dd.batch_size)
  idx = np.arange(b) % len(pairs[next(iter(pairs))])
  block = {k: v[idx].reshape((d, 1, b // d) + v.shape[1:]) for k, v in pairs.items()}
  p_state = trainer.replicate_for_step(state)
  p_aux = trainer.replicate_for_step(None)
  compiled_step, student_compile = bench_util.compile_timed(step, p_state, block, key, p_aux)
  box = [p_state]

  def one_step():
    box[0], metrics = compiled_step(box[0], block, key, p_aux)
    return metrics

  student_s = _timed(one_step, FLAGS.repeats)
  per_pair = teacher_s / int(dd.teacher_batch)
  uses = int(dd.steps) * b
  return {
      'method': config.method,
      'teacher': (f'consistent K=T={config.diffusion.num_steps} + VAE prior'
                  if config.method == 'pixel_aware' else
                  f'DPM-Solver++(2M)-{int(dd.teacher_steps)}'),
      'teacher_batch': int(dd.teacher_batch), 'teacher_s_per_batch': teacher_s,
      'teacher_s_per_pair': per_pair, 'student_batch': b, 'student_s_per_step': student_s,
      'student_s_per_pair': student_s / b,
      'pair_in_student_steps': per_pair * b / student_s,
      # The stage's whole pair cost: made once for num_pairs, or afresh for every use.
      'cache_s': per_pair * int(dd.num_pairs), 'on_the_fly_s': per_pair * uses,
      'num_pairs': int(dd.num_pairs), 'steps': int(dd.steps),
      'call_steps': list(distill_loss.call_steps(config)),
      'teacher_compile_s': teacher_compile, 'student_compile_s': student_compile,
      'device': bench_util.device_name()}


def main(_):
  rows = []
  for path in [FLAGS.config] + ([FLAGS.ddpm_config] if FLAGS.ddpm_config else []):
    config = config_lib.load_config_file(path)
    if FLAGS.teacher_batch > 0:
      config.distill.teacher_batch = FLAGS.teacher_batch
    for item in FLAGS.set:
      dotted, value = item.split('=', 1)
      section, field = dotted.rsplit('.', 1)
      node = config
      for part in section.split('.'):
        node = node[part]
      node[field] = ast.literal_eval(value)
    if int(config.distill.steps) == 0:
      print(f'error: {path} has no distill stage (distill.steps = 0)', file=sys.stderr)
      sys.exit(2)
    config_lib.validate_config(config)
    print(f'# {path}: {bench_util.device_name()}', flush=True)
    row = measure(config)
    row['config'] = path
    row['overrides'] = list(FLAGS.set)
    rows.append(row)
    print(f"{path}: teacher {row['teacher_s_per_batch']:.3g} s per {row['teacher_batch']} pairs, "
          f"student {row['student_s_per_step']:.3g} s per step of {row['student_batch']}",
          flush=True)
    bench_util.write_json(rows, FLAGS.out, quiet=True)
  bench_util.print_table(rows, COLUMNS)
  if FLAGS.out:
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
