"""Metric logging: ``WORKDIR/metrics.jsonl`` (one JSON object per line) and TensorBoard events.

TensorBoard files are written with ``tensorboardX``, which needs no TensorFlow. Only process 0
writes; other processes get a writer whose methods do nothing.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

import jax


class MetricWriter:

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, stage: str, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    record = {'stage': stage, 'step': int(step), 'time': time.time()}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for k, v in clean.items():
      self._tb.add_scalar(f'{stage}/{k}', v, int(step))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
