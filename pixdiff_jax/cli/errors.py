"""User mistakes: ``UsageError`` and the one-line ``error:`` exit (status 2;
``PIXDIFF_TRACEBACK=1`` shows the traceback instead)."""
from __future__ import annotations

import os
import sys

from pixdiff_jax.errors import UserError


class UsageError(UserError):
  """A user mistake: printed as one line, no traceback."""


def fail(message: str, err: BaseException | None = None) -> None:
  if err is not None and os.environ.get('PIXDIFF_TRACEBACK'):
    raise err
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def check_creatable_dir(path: str, what: str) -> None:
  """A UsageError unless ``path`` is a writable folder or could be created; creates nothing.

  The nearest existing folder on the way (``path`` itself or a parent) gets a probe file.
  """
  probe = os.path.abspath(path)
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if not os.path.isdir(probe):
    where = '' if probe == os.path.abspath(path) else f' (its parent {probe} is a file)'
    raise UsageError(f'{what} {path} is a file, not a directory{where}')
  try:
    import tempfile  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryFile(dir=probe):
      pass
  except OSError as err:
    raise UsageError(f'cannot write to {what} {path}: {err.strerror or err}') from err


def check_writable_dir(path: str, what: str) -> None:
  """Creates ``path`` if needed and writes a probe file into it; a UsageError if that fails."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise UsageError(f'{what} {path} is a file, not a directory')
  try:
    os.makedirs(path, exist_ok=True)
    import tempfile  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as err:
    raise UsageError(f'cannot write to {what} {path}: {err.strerror or err}') from err
