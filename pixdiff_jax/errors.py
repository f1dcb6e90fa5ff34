"""User mistakes and environment problems the user must fix: the exceptions the command line
prints as one ``error: ...`` line (exit status 2) instead of a traceback.

Every such exception derives from :class:`UserError`; ``pixdiff_jax.cli`` catches exactly that,
so a genuine bug (say a ``ValueError`` inside JAX or in this package) keeps its traceback. The
subclasses also derive from the built-in exception they replaced (``ConfigError`` is a
``ValueError``, ``NotFoundError`` a ``FileNotFoundError``, ``WriteError`` an ``OSError``), so
callers that catch those keep working.

This module imports nothing from the package: every other module may import it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
from typing import Iterator

__all__ = ['UserError', 'ConfigError', 'InputError', 'NotFoundError', 'WriteError',
           'write_failure_reason', 'writing']


class UserError(Exception):
  """A user mistake or an environment problem: printed as one line, no traceback."""


class ConfigError(UserError, ValueError):
  """A config field no run can use; the message names the field."""


class InputError(UserError, ValueError):
  """A file, data set or argument given by the user that cannot be used."""


class NotFoundError(UserError, FileNotFoundError):
  """A file, folder or checkpoint the run needs is not there."""


class WriteError(UserError, OSError):
  """Writing a file failed (full disk, quota, read-only file system, ...).

  Attributes:
    path: the file or folder that could not be written.
    reason: the system's words for it, e.g. ``'No space left on device'``.
    what: what the file is (``'checkpoint'``, ``'metrics'``, ...), or ``''``.
    advice: what is left intact and what to do, appended to the message.
  """

  def __init__(self, path: str, reason: str, what: str = '', advice: str = ''):
    self.path, self.reason, self.what, self.advice = str(path), reason, what, advice
    super().__init__(f'cannot write {what + " " if what else ""}{path}: {reason}'
                     + (f'; {advice}' if advice else ''))


# errno values that mean "this write cannot succeed until the user does something".
_WRITE_ERRNOS = {errno.ENOSPC: 'No space left on device', errno.EDQUOT: 'Disk quota exceeded',
                 errno.EROFS: 'Read-only file system', errno.EFBIG: 'File too large'}
# TensorStore (Orbax's array writer) reports a failed write as a ValueError whose text carries
# the OS error code: "... Failed to write ...: No space left on device [os_error_code='28']".
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def write_failure_reason(err: BaseException) -> str | None:
  """The reason (e.g. ``'No space left on device'``) if ``err`` or an exception it was raised
  from is a failed write that the user must fix; ``None`` for anything else."""
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    if isinstance(err, WriteError):
      return err.reason
    if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
      return err.strerror or _WRITE_ERRNOS[err.errno]
    m = _OS_ERROR_CODE.search(str(err))
    if m and int(m.group(1)) in _WRITE_ERRNOS:
      return os.strerror(int(m.group(1)))
    err = err.__cause__ or err.__context__
  return None


@contextlib.contextmanager
def writing(path: str, what: str = '') -> Iterator[None]:
  """Turns a failed write inside the block into a :class:`WriteError` naming ``path``."""
  try:
    yield
  except WriteError:
    raise
  except Exception as err:  # pylint: disable=broad-except
    reason = write_failure_reason(err)
    if reason is None:
      raise
    raise WriteError(path, reason, what) from err
