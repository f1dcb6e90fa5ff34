"""Progress reporting: a tqdm bar in a terminal, plain periodic lines otherwise.

A redirected log (``python main.py > log 2>&1``, CI, a batch job) must not fill up with
carriage-return bar updates, so :func:`progress` returns a tqdm bar only when stderr (where tqdm
draws) is a terminal, and otherwise a :class:`PlainProgress` with the same three methods that
prints one line every ``every`` units (and one at the end).
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from pixdiff_jax.utils.eta import format_duration

__all__ = ['PlainProgress', 'progress']


class PlainProgress:
  """``update(n)``, ``set_postfix(**values)``, ``close()`` like tqdm; prints plain lines.

  A line ``<desc>: <n>/<total> (<percent>%) <postfix>, <elapsed>[, ETA <left>]`` goes to
  ``file`` whenever the count crosses a multiple of ``every`` (or, with ``every_s``, when that
  many seconds passed since the last line: a long run with few, slow units is not silent for
  hours), and once at :meth:`close` unless the last one was already at that count (or nothing
  was counted: a run that failed before its first update prints nothing). The ETA is the rate
  since the first update (so a first step that compiles does not count) over what is left;
  tqdm's bar shows its own.
  """

  def __init__(self, *, total: int, initial: int = 0, desc: str = '', every: int = 1,
               disable: bool = False, file: TextIO | None = None, every_s: float | None = None):
    self.total, self.n, self.desc = int(total), int(initial), desc
    self.every = max(1, int(every))
    self.every_s = every_s
    self.disable = disable
    self.file = file
    self._postfix: dict[str, Any] = {}
    self._start = self._last_line = time.perf_counter()
    self._printed_at = None
    self._first: tuple[int, float] | None = None  # (n, time) at the first update

  def set_postfix(self, **values: Any) -> None:
    self._postfix = values

  def update(self, n: int = 1) -> None:
    before, self.n = self.n, self.n + int(n)
    if self._first is None:
      self._first = (self.n, time.perf_counter())
    if self.n // self.every > before // self.every or (
        self.every_s is not None and time.perf_counter() - self._last_line >= self.every_s):
      self._print()

  def close(self) -> None:
    if self._printed_at != self.n and self._first is not None:
      self._print()

  def _print(self) -> None:
    self._printed_at = self.n
    self._last_line = time.perf_counter()
    if self.disable:
      return
    pct = f' ({100 * self.n / self.total:.0f}%)' if self.total else ''
    extra = ''.join(f' {k}={v}' for k, v in self._postfix.items())
    now = time.perf_counter()
    eta = ''
    if self._first is not None and self.n > self._first[0] and self.n < self.total:
      rate = (self.n - self._first[0]) / max(now - self._first[1], 1e-9)
      eta = f', ETA {format_duration((self.total - self.n) / rate)}'
    print(f'{self.desc}: {self.n}/{self.total}{pct}{extra}, {now - self._start:.0f} s{eta}',
          file=self.file or sys.stderr, flush=True)


def progress(*, total: int, initial: int = 0, desc: str = '', every: int = 1,
             disable: bool = False, interactive: bool | None = None,
             every_s: float | None = None) -> Any:
  """A tqdm bar if stderr is a terminal (or ``interactive``), else a :class:`PlainProgress`.

  Args:
    total, initial, desc: as tqdm's.
    every: the plain lines' period, in units of ``update``.
    every_s: also a plain line when this many seconds passed since the last one.
    disable: no output at all (e.g. on processes other than 0).
    interactive: override the terminal test (tests).
  """
  if interactive is None:
    interactive = sys.stderr.isatty()
  if interactive:  # tqdm's bar shows the elapsed time, the ETA and the rate
    return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True)
  return PlainProgress(total=total, initial=initial, desc=desc, every=every, disable=disable,
                       every_s=every_s)
