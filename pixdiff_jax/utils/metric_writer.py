"""Metric logging: ``WORKDIR/metrics.jsonl`` (one JSON object per line) and TensorBoard events.

TensorBoard files are written with ``tensorboardX``, which needs no TensorFlow. Only process 0
writes; other processes get a writer whose methods do nothing. A non-finite value (a diverging
run) is kept in ``metrics.jsonl`` as ``"nan"``/``"inf"`` and left out of TensorBoard (which
would warn about it on every logged step). A failed write (a full disk) is a ``WriteError``
naming the file, also one in tensorboardX's background thread: that thread dies on it (its
traceback is not printed) and the next :meth:`MetricWriter.write` raises instead of blocking on
the thread's full queue.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from typing import Mapping

import jax

from pixdiff_jax.errors import WriteError, write_failure_reason, writing

# tensorboardX's writer threads, and how they ended (see _excepthook).
_WATCHED: set[int] = set()
_FAILED: dict[int, BaseException] = {}
_previous_hook = None


def _excepthook(args) -> None:
  """Records how a watched writer thread ended; its write failures print no traceback (the next
  ``write`` reports them in one line); everything else goes to the previous hook."""
  ident = args.thread.ident if args.thread is not None else None
  if ident in _WATCHED:
    _FAILED[ident] = args.exc_value
    if write_failure_reason(args.exc_value) is not None:
      return
  _previous_hook(args)


def _watch(threads) -> None:
  global _previous_hook
  if threading.excepthook is not _excepthook:
    _previous_hook, threading.excepthook = threading.excepthook, _excepthook
  _WATCHED.update(t.ident for t in threads)


class MetricWriter:

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    self._tb_threads = []
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tb_dir = os.path.join(workdir, 'tensorboard')
    if self.enabled:
      with writing(self.path, 'metrics'):
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(self.path, 'a', encoding='utf-8')
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      before = set(threading.enumerate())
      with writing(self.tb_dir, 'TensorBoard events'):
        self._tb = SummaryWriter(self.tb_dir)
      self._tb_threads = [t for t in threading.enumerate() if t not in before
                          and type(t).__module__.startswith('tensorboardX')]
      _watch(self._tb_threads)

  def write(self, stage: str, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    record = {'stage': stage, 'step': int(step), 'time': time.time()}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
    self._check_tb_thread()
    with writing(self.path, 'metrics'):
      self._jsonl.write(json.dumps(record) + '\n')
      self._jsonl.flush()
    with writing(self.tb_dir, 'TensorBoard events'):
      for k, v in clean.items():
        if math.isfinite(v):
          self._tb.add_scalar(f'{stage}/{k}', v, int(step))

  def _check_tb_thread(self) -> None:
    """Raises if tensorboardX's writer thread died (its queue would block ``add_scalar``)."""
    for t in self._tb_threads:
      if not t.is_alive():
        err = _FAILED.get(t.ident)
        reason = write_failure_reason(err) if err is not None else None
        if reason is not None:
          raise WriteError(self.tb_dir, reason, 'TensorBoard events') from err
        raise RuntimeError(f'the TensorBoard writer thread stopped: {err!r}') from err

  def close(self) -> None:
    if not self.enabled:
      return
    self.enabled = False
    try:
      with writing(self.path, 'metrics'):
        self._jsonl.close()
    finally:
      self._check_tb_thread()  # a dead thread: raise here, tb.close() would block
      with writing(self.tb_dir, 'TensorBoard events'):
        self._tb.close()
