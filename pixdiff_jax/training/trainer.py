"""Two-stage training: the scale VAE (stage ``vae``), then the T-headed reverse model with the VAE
frozen (stage ``reverse``); or the single stage ``ddpm`` of the one-head baseline.

Design (docs/design.md section 6):

* :func:`get_train_step` returns a pure single-device step; :func:`get_p_train_step` wraps it in
  ``lax.scan`` (``training.steps_per_dispatch`` steps per call) and ``jax.pmap`` over local
  devices with ``lax.pmean`` of gradients and metrics and a donated state.
* Randomness of step ``s`` on device ``d`` is ``fold_in(fold_in(stage_key, d), s)``: no RNG is
  stored, and a resumed run replays exactly what an uninterrupted run would have drawn.
* Orbax checkpoints per stage in ``WORKDIR/checkpoints/<stage>``; a run resumes from the latest,
  a finished stage is not retrained, and Ctrl-C / SIGTERM writes a checkpoint before exiting.
* Metrics go to ``WORKDIR/metrics.jsonl`` and TensorBoard; a PNG grid goes to ``WORKDIR/samples``
  every ``training.snapshot_every`` steps. Only process 0 logs and draws progress bars.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any, Callable, Iterable, Sequence

import flax.jax_utils
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from pixdiff_jax import config as config_lib, data, models, sampling
from pixdiff_jax.training import checkpointing, losses, memory
from pixdiff_jax.utils import distributed, eta, image_grid, metric_writer, progress
from pixdiff_jax.training.state import (TrainState, create_train_state, ema_decay_at,
                                        make_optimizer, num_consecutive_skipped,
                                        num_skipped_updates, update_ema)

PyTree = Any
LossFn = Callable[[PyTree, jax.Array, jax.Array, PyTree], tuple[jax.Array, dict]]
# A hook sees (stage name, step) after every dispatch; tests use it to simulate a crash.
Hook = Callable[[str, int], None]

AXIS = 'batch'


stages_for = checkpointing.stages_for


# ---------------------------------------------------------------------------- steps
def get_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, ema_decay: float,
                   ema_warmup: bool, axis_name: str | None = AXIS):
  """Pure single-device train step ``(state, x0 [b,H,W,C], key, aux) -> (state, metrics)``.

  ``loss_fn(params, x0, rng, aux) -> (loss, metrics)``. With ``axis_name`` set, the step must
  run under ``pmap``/``shard_map`` with that axis: gradients and metrics are averaged over it and
  the RNG is folded with the device index.
  """

  def train_step(state: TrainState, x0: jax.Array, key: jax.Array, aux: PyTree):
    device = jax.lax.axis_index(axis_name) if axis_name else 0
    rng = jax.random.fold_in(jax.random.fold_in(key, device), state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, metrics), grads = grad_fn(state.params, x0, rng, aux)
    metrics = dict(metrics, loss=loss)
    if axis_name:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay, ema_warmup)
    ema_params = update_ema(state.ema_params, params, decay)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['skipped_updates'] = num_skipped_updates(opt_state).astype(jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def get_p_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, ema_decay: float,
                     ema_warmup: bool):
  """Data-parallel train step over local devices, ``lax.scan`` over a block of steps.

  Takes ``(state [D,...], x0 [D, k, b, H, W, C], key, aux [D,...])`` and returns the state and
  the metrics averaged over the ``k`` steps (``[D]`` each). The state buffers are donated.

  With several devices this is ``jax.pmap`` over the local ones (gradients ``pmean``-ed over
  the devices of every process of a multi-process job; ``axis_index`` is the global device
  index, so process ``p`` of a 2-process job with one device each draws what device ``p`` of a
  single process with 2 devices draws). With one device in all it is ``jax.jit`` of the same
  step without a device axis (device index 0, so the randomness is the same): on XLA:CPU a
  pmapped step runs about 16x slower than the jitted one (4.0 s vs 0.25 s per VAE step of
  configs/fashion_mnist.py), and ``vmap`` over a size-1 device axis is as slow (the replicated
  kernels turn convolutions into grouped ones).
  """
  n_dev = jax.device_count()
  train_step = get_train_step(loss_fn, tx, ema_decay=ema_decay, ema_warmup=ema_warmup,
                              axis_name=AXIS if n_dev > 1 else None)

  def multi_step(state, x0_block, key, aux):
    if x0_block.shape[0] == 1:
      # No scan for a single step: XLA:CPU runs a train step inside a while loop ~13x slower
      # (measured 3.7 s vs 0.28 s per VAE step of configs/fashion_mnist.py), so CPU configs
      # use steps_per_dispatch=1; accelerators profit from several steps per dispatch.
      return train_step(state, x0_block[0], key, aux)

    def body(s, x0):
      return train_step(s, x0, key, aux)
    state, metrics = jax.lax.scan(body, state, x0_block)
    return state, jax.tree_util.tree_map(lambda m: jnp.mean(m, axis=0), metrics)

  if n_dev > 1:
    return jax.pmap(multi_step, axis_name=AXIS, in_axes=(0, 0, None, 0), donate_argnums=(0,))

  def single_device(state, x0_block, key, aux):
    first = lambda tree: jax.tree_util.tree_map(lambda a: a[0], tree)
    state, metrics = multi_step(first(state), x0_block[0], key, first(aux))
    return jax.tree_util.tree_map(lambda a: a[None], (state, metrics))

  return jax.jit(single_device, donate_argnums=(0,))


def replicate_for_step(tree: PyTree) -> PyTree:
  """``tree`` with a leading local-device axis, laid out as :func:`get_p_train_step` returns
  its state, so that the step's second call reuses the first call's executable.

  ``flax.jax_utils.replicate`` puts the copies on a mesh axis named ``'_device_put_sharded'``
  while ``pmap`` returns arrays on its own axis (``'batch'``): a different input sharding, so
  step 2 traced and compiled the whole train step once more (tens of seconds on a CPU). An
  identity ``pmap`` with the step's axis name gives the step's own layout; with one device the
  step is ``jit`` and returns single-device arrays.
  """
  replicated = flax.jax_utils.replicate(tree)
  if not jax.tree_util.tree_leaves(replicated):
    return replicated
  if jax.device_count() > 1:
    return jax.pmap(lambda x: x, axis_name=AXIS)(replicated)
  device = jax.local_devices()[0]
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, device), replicated)


# ---------------------------------------------------------------------------- stages
@dataclasses.dataclass
class Stage:
  """What differs between the stages: the network, its loss, frozen inputs and a snapshot."""
  name: str
  num_steps: int
  init_params: Callable[[jax.Array], PyTree]
  loss_fn: LossFn
  aux: PyTree = None
  # (ema params, rng) -> float images [N, H, W, C] in [0, 1], for the snapshot grid.
  snapshot_fn: Callable[[PyTree, jax.Array], jax.Array] | None = None


def _dummy_batch(config, n: int = 1) -> jax.Array:
  shape = (n, config.data.image_size, config.data.image_size, config.data.num_channels)
  return jnp.full(shape, 0.5, jnp.float32)


def build_stage(config: ml_collections.ConfigDict, name: str, *,
                vae_params: PyTree = None) -> Stage:
  """Builds stage ``name`` ('vae', 'reverse' or 'ddpm') from the config."""
  if name == 'vae':
    vae = models.build_vae(config)
    loss = losses.get_vae_loss_fn(config, vae)

    # jit: run eagerly, the decoder's ops were dispatched (and compiled) one by one (~9 s for the
    # main job's VAE on 2 CPU cores; jitted, 4.4 s with its compilation).
    snapshot = jax.jit(sampling.get_scale_prior_fn(config, vae, batch_size=16))
    return Stage(name, config.training.vae_steps,
                 init_params=lambda k: models.init_params(vae, config, k),
                 loss_fn=lambda p, x, r, aux: loss(p, x, r, train=True),
                 snapshot_fn=snapshot)
  if name == 'reverse':
    vae = models.build_vae(config)
    net = models.build_reverse_model(config)
    loss = losses.get_reverse_loss_fn(config, net, vae)
    sample = sampling.get_sample_fn(config, batch_size=16)
    return Stage(name, config.training.reverse_steps,
                 init_params=lambda k: models.init_params(net, config, k),
                 loss_fn=lambda p, x, r, aux: loss(p, x, r, vae_params=aux, train=True),
                 aux=vae_params,
                 snapshot_fn=lambda p, r: sample({'vae': vae_params, 'reverse': p}, r))
  if name == 'ddpm':
    net = models.build_reverse_model(config)
    loss = losses.get_ddpm_loss_fn(config, net)
    sample = sampling.get_sample_fn(config, batch_size=16)
    return Stage(name, config.training.reverse_steps,
                 init_params=lambda k: models.init_params(net, config, k),
                 loss_fn=lambda p, x, r, aux: loss(p, x, r, train=True),
                 snapshot_fn=lambda p, r: sample({'model': p}, r))
  raise ValueError(f"unknown stage {name!r}; expected 'vae', 'reverse' or 'ddpm'")


# ---------------------------------------------------------------------------- loop
class TrainingDivergedError(Exception):
  """Training produced non-finite updates or parameters; the message names the stage, the step
  and the last checkpoint that is still good."""


class TrainingInterrupted(KeyboardInterrupt):
  """Ctrl-C or SIGTERM during training, raised after the interrupt checkpoint was written.

  Attributes: ``signum`` (``signal.SIGINT`` or ``signal.SIGTERM``), ``stage``, ``step`` and
  ``checkpoint`` (the step folder written, or ``None`` with the reason in ``note``).
  """

  def __init__(self, signum: int, stage: str, step: int, checkpoint: str | None, note: str):
    self.signum, self.stage, self.step, self.checkpoint, self.note = (
        signum, stage, step, checkpoint, note)
    super().__init__(note)


class _Signal(KeyboardInterrupt):
  def __init__(self, signum: int):
    super().__init__(f'signal {signum}')
    self.signum = signum


class _Interrupt:
  """SIGINT / SIGTERM during training: the first one is recorded and acted on between two steps
  (:meth:`check`), so that it never lands inside a checkpoint write (an asynchronous
  KeyboardInterrupt there could leave the checkpointer's threads waiting on each other); a second
  one raises at once."""

  _SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __enter__(self):
    self.signum, self._old = None, {}
    try:
      for s in self._SIGNALS:
        self._old[s] = signal.signal(s, self._record)
    except ValueError:  # not in the main thread: Python's defaults stay
      pass
    return self

  def _record(self, signum, frame):
    if self.signum is not None:
      raise _Signal(signum)
    self.signum = signum

  def check(self):
    """Raises :class:`_Signal` if a signal arrived since the last check."""
    if self.signum is not None:
      raise _Signal(self.signum)

  def __exit__(self, *exc):
    for s, old in self._old.items():
      signal.signal(s, old)
    return False


def _stage_key(config, name: str) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(config.seed), sum(map(ord, name)))


def _all_finite(tree: PyTree) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x))))
             for x in jax.tree_util.tree_leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def train_stage(config: ml_collections.ConfigDict, workdir: str, stage: Stage, *,
                writer: metric_writer.MetricWriter | None = None,
                hooks: Sequence[Hook] = (), source: data.ImageSource | None = None) -> PyTree:
  """Trains (or resumes, or skips if finished) one stage; returns its unreplicated final state.

  Resumes from the newest readable checkpoint (unreadable newer ones are moved aside, see
  ``checkpointing``). Stops with :class:`TrainingDivergedError` after
  ``training.max_skipped_updates`` consecutive non-finite updates, or when the final parameters
  are not finite; a checkpoint is written only while the parameters are finite and the latest
  update was applied, so a stage is marked finished (a checkpoint at its last step) only if its
  parameters are finite. Ctrl-C / SIGTERM write a checkpoint and raise :class:`TrainingInterrupted`.
  """
  t = config.training
  max_skipped = int(t.get('max_skipped_updates', 10))
  is_main = jax.process_index() == 0
  key = _stage_key(config, stage.name)
  tx = make_optimizer(config.optim)
  ckpt = checkpointing.StageCheckpointer(workdir, stage.name, keep=t.keep_checkpoints)
  make_state = lambda k: create_train_state(stage.init_params(k), tx)
  init_key = jax.random.fold_in(key, 2**31 - 1)
  # Restore into shapes from eval_shape: no initialisation is compiled or run.
  found = ckpt.restore_latest(jax.eval_shape(make_state, init_key))
  if found is not None:
    state, good_step = found
    logging.info('stage %s: resumed from step %d', stage.name, int(state.step))
  else:
    # jit: Flax's eager init dispatches op by op, which costs tens of seconds on a CPU.
    state, good_step = jax.jit(make_state)(init_key), None
  start = int(state.step)
  if start >= stage.num_steps:
    logging.info('stage %s: finished (%d/%d steps); not retrained', stage.name, start,
                 stage.num_steps)
    ckpt.close()
    return state

  # Compiled ahead of time at the first call; a step that cannot fit the device is one error.
  p_train_step = memory.FitCheckedStep(get_p_train_step(
      stage.loss_fn, tx, ema_decay=t.ema_decay, ema_warmup=t.ema_warmup), config, stage.name)
  p_state = replicate_for_step(state)
  p_aux = replicate_for_step(stage.aux)
  batches = data.get_batch_iterator(config, start_step=start, source=source)
  k_max = t.steps_per_dispatch
  step = start
  # A bar in a terminal; one plain line per log_every steps in a redirected log.
  pbar = progress.progress(total=stage.num_steps, initial=start, desc=f'train {stage.name}',
                           every=t.log_every, disable=not is_main)
  last_time, last_step = time.perf_counter(), step
  clock = eta.StageClock(stage.name, start=start, total=stage.num_steps,
                         batch_size=t.batch_size, quiet=not is_main)

  def last_good() -> str:
    if good_step is None:
      return 'none (the stage has no checkpoint yet)'
    return ckpt.step_dir(good_step)

  def diverged(why: str) -> TrainingDivergedError:
    rerun = ('the stage starts anew' if good_step is None else
             'training resumes from that checkpoint')
    return TrainingDivergedError(
        f'stage {stage.name} diverged at step {step}: {why}; its parameters were not saved. '
        f'Last good checkpoint: {last_good()}. Lower optim.lr (now {config.optim.lr:g}) or '
        f'set optim.grad_clip, then rerun ({rerun})')

  def save_if_good(at_step) -> str | None:
    """Writes a checkpoint unless the state is suspect; returns why not, or None."""
    nonlocal good_step
    state = flax.jax_utils.unreplicate(p_state)
    skipped = int(num_consecutive_skipped(state.opt_state))
    if skipped:
      return f'the last {skipped} updates were skipped (non-finite gradients)'
    if not (_all_finite(state.params) and _all_finite(state.ema_params)):
      return 'the parameters are not finite'
    ckpt.save(at_step, state, force=True)
    good_step = at_step
    return None

  try:
    with _Interrupt() as interrupt:
      while step < stage.num_steps:
        k = min(k_max, stage.num_steps - step)
        block = np.stack([next(batches) for _ in range(k)], axis=1)  # [D, k, b, H, W, C]
        p_state, metrics = p_train_step(p_state, block, key, p_aux)
        step += k
        for hook in hooks:
          hook(stage.name, step)
        done = step >= stage.num_steps
        # One scalar per dispatch: consecutive skipped (non-finite) updates.
        skipped = int(jax.device_get(num_consecutive_skipped(p_state.opt_state))[0])
        clock.update(step)  # the step's result is on the host: logs the projected time once
        if skipped >= max_skipped:
          raise diverged(f'{skipped} consecutive updates had non-finite gradients and were '
                         f'skipped (training.max_skipped_updates={max_skipped})')
        if done or step % t.log_every < k:
          m = jax.tree_util.tree_map(lambda x: float(x[0]), jax.device_get(metrics))
          now = time.perf_counter()
          m['steps_per_sec'] = (step - last_step) / max(now - last_time, 1e-9)
          last_time, last_step = now, step
          if not np.isfinite(m['loss']):
            logging.warning('stage %s step %d: non-finite loss %s', stage.name, step, m['loss'])
          if writer is not None:
            writer.write(stage.name, step, m)
          pbar.set_postfix(loss=f"{m['loss']:.4g}", steps_s=f"{m['steps_per_sec']:.2f}")
        pbar.update(k)
        if done or step % t.checkpoint_every < k:
          why_not = save_if_good(step)
          if why_not is not None:
            if done:  # never mark a stage finished with suspect parameters
              raise diverged(why_not)
            logging.warning('stage %s step %d: no checkpoint written: %s', stage.name, step,
                            why_not)
        if (stage.snapshot_fn is not None and is_main and t.snapshot_every > 0
            and (done or step % t.snapshot_every < k)):
          _snapshot(workdir, stage, flax.jax_utils.unreplicate(p_state.ema_params), key, step)
        interrupt.check()  # between two steps, after this step's checkpoint
  except KeyboardInterrupt as stop:
    signum = getattr(stop, 'signum', signal.SIGINT)
    try:
      # Not twice: the step's checkpoint may be the one just written (or the one resumed from).
      why_not = None if good_step == step else save_if_good(step)
      ckpt.wait()
      written = ckpt.step_dir(step) if why_not is None else None
      note = (f'checkpoint written: {written}' if why_not is None else
              f'no checkpoint written ({why_not}); last good checkpoint: {last_good()}')
    except Exception as err:  # pylint: disable=broad-except
      written, note = None, (f'could not write the interrupt checkpoint ({err}); last good '
                             f'checkpoint: {last_good()}')
    raise TrainingInterrupted(
        signum, stage.name, step, written,
        f'{signal.Signals(signum).name} during stage {stage.name} at step {step}; {note}; '
        'run the same command to resume') from None
  finally:
    pbar.close()
  ckpt.close()
  return flax.jax_utils.unreplicate(p_state)


def _snapshot(workdir: str, stage: Stage, ema_params: PyTree, key: jax.Array, step: int):
  images = np.asarray(jax.device_get(stage.snapshot_fn(ema_params, jax.random.fold_in(key, 0))))
  if not np.all(np.isfinite(images)):
    logging.warning('stage %s step %d: snapshot skipped, the sampled images are not finite',
                    stage.name, step)
    return
  path = os.path.join(workdir, 'samples', f'{stage.name}_step{step:07d}.png')
  image_grid.save_grid(path, data.to_uint8(images))


def train(config: ml_collections.ConfigDict, workdir: str, *, stages: Iterable[str] | None = None,
          hooks: Sequence[Hook] = ()) -> dict[str, PyTree]:
  """Runs every stage of ``config`` (or just ``stages``) in ``workdir``; resumes if possible.

  Returns the final EMA parameters of each stage that was run, keyed by stage name.
  """
  config_lib.validate_config(config)
  models.validate_config(config)
  wanted = tuple(stages) if stages else stages_for(config)
  for name in wanted:
    if name not in stages_for(config):
      raise ValueError(f'stage {name!r} does not exist for method={config.method!r}; '
                       f'stages: {stages_for(config)}')
  stored_path = config_lib.config_path(workdir)
  if os.path.exists(stored_path):  # every process reads it; an incompatible one ends them all
    stored = config_lib.load_config(workdir)
    if checkpointing.has_checkpoints(workdir):
      config_lib.check_compatible(stored, config)
    elif config_lib.architecture_differences(stored, config):
      # Nothing was trained with the stored config (e.g. a first run failed before training):
      # the workdir is not claimed yet.
      logging.warning('replacing %s: no checkpoint was written with it', stored_path)
  # Open the data first: a missing dataset fails here, before anything is compiled or the
  # workdir is claimed (config.json is written only when training starts).
  source = data.load_source(config)
  distributed.barrier('data loaded', timeout_s=600)
  if jax.process_index() == 0:  # the others would race its write
    config_lib.save_config(config, workdir)
  writer = metric_writer.MetricWriter(workdir)
  results = {}
  try:
    for name in wanted:
      vae_params = None
      if name == 'reverse':
        vae_params = results.get('vae')
        if vae_params is None:
          vae_params = checkpointing.load_stage_params(config, workdir, 'vae')
      state = train_stage(config, workdir, build_stage(config, name, vae_params=vae_params),
                          writer=writer, hooks=hooks, source=source)
      results[name] = state.ema_params
  finally:
    writer.close()
  return results
