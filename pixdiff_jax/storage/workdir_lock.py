"""One run at a time per workdir: an advisory lock file that training (``WORKDIR/train.lock``)
and eval (``WORKDIR/eval.lock``) hold while they write.

The lock is ``fcntl.flock`` on the file, so the kernel releases it when its process ends, however
it ends; the file's one JSON line names the holder (process id, host, start time, command) for
the error message of a second run::

    workdir runs/x is in use by process 4242 (started 2025-01-31 14:02:11 UTC on host a:
    python main.py --workdir runs/x); wait for it to end or use another --workdir

A holder that ends normally removes the file. A file that still names a holder when the lock is
free belonged to a process that was killed: the next run takes it over with a notice.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Callable, Iterator

from pixdiff_jax.errors import UserError, WriteError

__all__ = ['WorkdirInUseError', 'WorkdirLock', 'hold']


class WorkdirInUseError(UserError):
  """Another live process holds the workdir's lock."""


def _describe(holder: dict) -> str:
  where = '' if holder.get('host') in (None, socket.gethostname()) else f" on host {holder['host']}"
  command = f": {holder['command']}" if holder.get('command') else ''
  return (f"process {holder.get('pid', '?')} (started {holder.get('started', '?')}{where}"
          f"{command})")


class WorkdirLock:
  """The lock file ``<workdir>/<purpose>.lock``; :meth:`acquire` or ``WorkdirInUseError``."""

  def __init__(self, workdir: str, purpose: str = 'train'):
    self.workdir, self.purpose = workdir, purpose
    self.path = os.path.join(workdir, f'{purpose}.lock')
    self._fd: int | None = None

  def _read(self, fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode('utf-8', 'replace').strip()
    if not text:
      return {}
    try:
      holder = json.loads(text)
    except ValueError:
      return {'pid': '?', 'started': f'? (unreadable lock file: {text[:60]!r})'}
    return holder if isinstance(holder, dict) else {}

  def acquire(self, notice: Callable[[str], None] | None = None) -> 'WorkdirLock':
    """Takes the lock (the workdir must exist); a stale holder is replaced with a ``notice``."""
    notice = notice or (lambda msg: print(msg, file=sys.stderr, flush=True))
    while True:
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as err:  # e.g. a read-only file system
        raise WriteError(self.path, err.strerror or str(err), 'lock file') from err
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:  # held by a live process
        holder = self._read(fd)
        os.close(fd)
        raise WorkdirInUseError(
            f'workdir {self.workdir} is in use by {_describe(holder)}; wait for it to end or '
            f'use another --workdir') from None
      # The file may have been removed (and made anew) between open and flock: retry on it.
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    stale = self._read(fd)
    if stale:
      notice(f'notice: taking over the workdir lock {self.path} of {_describe(stale)}, which '
             'is no longer running')
    me = {'pid': os.getpid(), 'host': socket.gethostname(),
          'started': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
          'purpose': self.purpose, 'command': ' '.join(['python', *sys.argv])[:300]}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(me) + '\n').encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    """Removes the file, then drops the lock (a run waiting to open the removed file retries on
    the path, see :meth:`acquire`)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.unlink(self.path)
    except OSError:
      try:
        os.ftruncate(fd, 0)  # not a stale holder either way
      except OSError:
        pass
    finally:
      os.close(fd)


def _missing_dirs(path: str) -> list[str]:
  """``path`` and its missing parents, deepest first (empty if ``path`` exists)."""
  missing = []
  path = os.path.abspath(path)
  while not os.path.exists(path):
    missing.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return missing


@contextlib.contextmanager
def hold(workdir: str, purpose: str = 'train', *,
         notice: Callable[[str], None] | None = None) -> Iterator[WorkdirLock]:
  """Creates ``workdir`` if needed and holds its lock for the block.

  If this call created the workdir and it holds nothing but the lock file at the end (e.g. the
  run failed before writing anything), the folders it created are removed again.
  """
  created = _missing_dirs(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as err:
    raise WriteError(workdir, err.strerror or str(err), 'workdir') from err
  lock = WorkdirLock(workdir, purpose)
  try:
    lock.acquire(notice)
  except BaseException:
    if created and not os.listdir(workdir):
      _remove_empty(created)
    raise
  try:
    yield lock
  finally:
    lock.release()
    if created and not os.listdir(workdir):
      _remove_empty(created)


def _remove_empty(dirs: list[str]) -> None:
  for d in dirs:  # deepest first
    try:
      os.rmdir(d)
    except OSError:
      return
