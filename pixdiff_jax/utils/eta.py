"""How long a training stage takes: its step count at the start, and after its first timed steps
(the first dispatch, which compiles, is not timed) the seconds per step and the projected time to
finish.

    clock = eta.StageClock('reverse', start=0, total=1_500_000, batch_size=128)  # logs the count
    ...  # after every dispatch, once its result is on the host:
    clock.update(step)                     # logs the projection once, then stays quiet
"""
from __future__ import annotations

import datetime
import time
from typing import Callable

from absl import logging

__all__ = ['StageClock', 'format_duration']


def format_duration(seconds: float) -> str:
  """``'12 s'``, ``'5 min 3 s'``, ``'7 h 05 min'``, ``'4 d 6 h'`` (rounded to the last unit)."""
  s = max(0, int(round(seconds)))
  if s < 60:
    return f'{s} s'
  if s < 3600:
    return f'{s // 60} min {s % 60} s'
  if s < 86400:
    m = int(round(seconds / 60))
    return f'{m // 60} h {m % 60:02d} min'
  h = int(round(seconds / 3600))
  return f'{h // 24} d {h % 24} h'


class StageClock:
  """Logs a stage's step count when created and, once, its projected time to finish.

  The projection is made at the first :meth:`update` with at least ``timed_steps`` steps, or
  ``timed_seconds`` seconds, since the first update (the first dispatch includes compilation and
  is excluded); it extrapolates that rate over the steps left.

  Attributes:
    seconds_per_step: the measured rate once projected, else None.
    projection: the logged projection line once made, else None.
  """

  def __init__(self, stage: str, *, start: int, total: int, batch_size: int | None = None,
               timed_steps: int = 20, timed_seconds: float = 10.0, quiet: bool = False,
               log: Callable[[str], None] | None = None,
               clock: Callable[[], float] = time.perf_counter):
    self.stage, self.start, self.total = stage, int(start), int(total)
    self.timed_steps, self.timed_seconds = max(1, int(timed_steps)), float(timed_seconds)
    self._log = log or (lambda line: logging.info('%s', line))
    if quiet:  # e.g. processes other than 0 of a multi-process job
      self._log = lambda line: None
    self._clock = clock
    self._first: tuple[int, float] | None = None
    self.seconds_per_step: float | None = None
    self.projection: str | None = None
    left = self.total - self.start
    batch = f', batch {batch_size}' if batch_size else ''
    done = f' ({self.start:,} done, {left:,} to go)' if self.start else ''
    self._log(f'stage {stage}: {self.total:,} steps{done}{batch}; the projected time follows '
              f'the first {self.timed_steps} timed steps (or {self.timed_seconds:g} s) after '
              f'compilation')

  def update(self, step: int) -> str | None:
    """Call after every dispatch (its result fetched); returns the projection line once."""
    now = self._clock()
    if self._first is None:
      self._first = (int(step), now)
      return None
    if self.projection is not None:
      return None
    s0, t0 = self._first
    steps, seconds = int(step) - s0, now - t0
    if steps < 1 or (steps < self.timed_steps and seconds < self.timed_seconds):
      return None
    self.seconds_per_step = seconds / steps
    left = max(0, self.total - int(step))
    remaining = left * self.seconds_per_step
    whole = (self.total - self.start) * self.seconds_per_step
    finish = (datetime.datetime.now() + datetime.timedelta(seconds=remaining)).strftime(
        '%Y-%m-%d %H:%M')
    self.projection = (
        f'stage {self.stage}: {self.seconds_per_step:.4g} s/step over steps {s0 + 1}-{step}; '
        f'{left:,} steps to go: about {format_duration(remaining)} (finishing around {finish}; '
        f'{format_duration(whole)} for the stage\'s {self.total - self.start:,} steps of this '
        f'run, compilation excluded)')
    self._log(self.projection)
    return self.projection
