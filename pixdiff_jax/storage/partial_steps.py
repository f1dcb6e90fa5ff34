"""Orbax's unfinished checkpoint steps (``<step>.orbax-checkpoint-tmp*`` folders) after a failed
write: found and removed, also while TensorStore's remaining writes still re-create them."""
from __future__ import annotations

import os
import re
import shutil
import time

PARTIAL_STEP = re.compile(r'^(\d+)\.orbax-checkpoint-tmp')
SETTLE_SECONDS = 5.0  # how long a failed write's remaining file writes may go on


def remove_partial_steps(directory: str) -> list[int]:
  """Deletes the unfinished step folders in a stage's checkpoint ``directory``; returns their
  steps. TensorStore's writes that were in flight when one failed go on in C++ threads and
  re-create the folder they write into, so this removes until two passes 0.2 s apart find
  nothing (at most ``SETTLE_SECONDS``)."""
  if not os.path.isdir(directory):
    return []
  steps, quiet_passes, deadline = set(), 0, time.monotonic() + SETTLE_SECONDS
  while quiet_passes < 2 and time.monotonic() < deadline:
    found = [(name, int(m.group(1))) for name in sorted(os.listdir(directory))
             if (m := PARTIAL_STEP.match(name))]
    for name, step in found:
      _remove_tree(os.path.join(directory, name))
      steps.add(step)
    quiet_passes = 0 if found else quiet_passes + 1
    if not steps:
      break  # nothing was ever partial: nothing is writing
    time.sleep(0.2)
  return sorted(steps)


def _remove_tree(path: str, attempts: int = 5) -> None:
  """``shutil.rmtree`` that also removes files a finishing writer adds while it runs."""
  for _ in range(attempts):
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.exists(path):
      return
    time.sleep(0.05)
  shutil.rmtree(path)  # the last attempt's error names what could not be removed
