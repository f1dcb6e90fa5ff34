"""Multi-process (multi-host) runtime: start-up with clear errors, failure propagation, gathers.

One process per machine (or per GPU group), all running the same ``main.py`` command with
``--distributed``; JAX's multi-controller runtime (``jax.distributed.initialize``) connects them,
and ``pmap`` collectives (gradient ``pmean``) span every device of every process.

* :func:`initialize`: explicit ``coordinator='HOST:PORT', num_processes, process_id`` for a hand
  launch, or none of them for JAX's auto-detection (SLURM, cloud TPU, ``JAX_COORDINATOR_ADDRESS``
  / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``). On CPU the gloo collectives are selected. A
  start-up that cannot complete (coordinator unreachable, a process missing, a wrong
  ``--num_processes``, a duplicate ``--process_id``, the port taken) ends in one
  :class:`DistributedError` line within ``timeout_s`` instead of a hang or an XLA abort.
* :func:`report_failure`: a process that fails (e.g. its data are missing) publishes its message
  in the coordinator's key-value store; a watcher thread in every other process prints it as
  ``error: process I failed: ...`` and ends that process too, wherever it is waiting.
* :func:`barrier`: all processes meet, with a timeout and a message naming the step.
* :func:`my_items` / :func:`gather_items`: process ``p`` of ``P`` does items ``p, p + P, ...`` of
  a list of ``n`` (e.g. sample batches); every process gets all ``n`` results back in order.

Only process 0 logs, writes metrics, snapshots and sample files; checkpoints are written once per
step by Orbax (all processes call ``save``; the values are replicated, process 0 writes them), so
the workdir must be on a file system every process sees.

``pmap`` and newer JAX: since JAX 0.8 ``jax.pmap`` is implemented with ``jit`` + ``shard_map``
and is in maintenance mode. The multi-process path here (``pmap`` with ``pmean`` across
processes, ``flax.jax_utils.replicate``, ``process_allgather``, Orbax saving, the key-value
store) runs without a deprecation warning on jax 0.12.0.1 (Python 3.12). If ``pmap`` goes, the
train step becomes ``jax.jit(jax.shard_map(step, mesh=Mesh(jax.devices(), ('batch',)), ...))``
with each process's batch turned into one global array by
``jax.make_array_from_process_local_data`` and the state replicated with a ``NamedSharding``
instead of ``replicate``/``unreplicate``; ``axis_index`` and the data layout stay as they are.

Known limit: with two processes of the same ``--process_id`` the one that registered first is
ended by JAX's coordination service itself (an XLA ``F...`` log line and exit code 134); the
other processes end with this module's one-line timeout message.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Callable

import jax
import numpy as np

from pixdiff_jax.errors import UserError

_FAILED_KEY = 'pixdiff_jax/failed'
_state = {'active': False, 'finished': False, 'timeout_s': 60}


class DistributedError(UserError):
  """A multi-process start-up or runtime problem, printed as one line."""


def _client():
  """JAX's distributed runtime client (the key-value store and barriers); None if not started.

  There is no public accessor: Orbax reads the same attribute
  (``orbax.checkpoint.multihost.get_jax_distributed_client``).
  """
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return jax_distributed.global_state.client


def parse_address(address: str) -> tuple[str, int]:
  """``'HOST:PORT'`` -> ``(host, port)``; ``DistributedError`` naming ``--coordinator`` if not."""
  host, sep, port = address.rpartition(':')
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedError(
        f'--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234 or 127.0.0.1:1234), got {address!r}')
  return host.strip('[]'), int(port)


def _port_is_free(port: int) -> bool:
  """Whether this machine can listen on ``port`` (JAX's coordinator binds ``[::]:PORT``)."""
  for family, addr in ((socket.AF_INET6, '::'), (socket.AF_INET, '0.0.0.0')):
    try:
      with socket.socket(family, socket.SOCK_STREAM) as s:
        # As gRPC does: connections of an earlier run in TIME_WAIT do not block the port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
      return True
    except OSError as err:
      if family == socket.AF_INET6 and err.errno in (97, 99):  # no IPv6 here: try IPv4
        continue
      return False
  return False


def _watchdog(seconds: float, message: str) -> Callable[[], None]:
  """Ends the process with ``error: message`` unless the returned ``cancel()`` runs in time.

  JAX's start-up blocks in C++ (with the GIL released) and, when its own timeout passes,
  aborts the process with a stack trace; this thread speaks first, in one line.
  """
  done = threading.Event()

  def watch():
    if not done.wait(seconds):
      _die(message)

  threading.Thread(target=watch, name='pixdiff-startup-watchdog', daemon=True).start()
  return done.set


def _die(message: str, code: int = 2) -> None:
  sys.stdout.flush()
  print(f'error: {message}', file=sys.stderr, flush=True)
  os._exit(code)  # pylint: disable=protected-access  (skips JAX's shutdown barrier: no hang)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: float = 60.0) -> None:
  """Starts JAX's distributed runtime; explicit flags or (none given) auto-detection.

  Args:
    coordinator: ``HOST:PORT`` of process 0 (which runs the coordinator service there).
    num_processes: number of processes in the job.
    process_id: this process's index in ``[0, num_processes)``.
    timeout_s: bound on the whole start-up (all processes connected) and on the failure
      detection afterwards (heartbeats).

  Raises:
    DistributedError: bad flags, the port in use, or auto-detection finding no cluster.
      A start-up that does not complete in ``timeout_s`` ends the process (exit code 2) with
      one ``error:`` line from a watchdog thread.
  """
  explicit = (coordinator, num_processes, process_id)
  if any(v is not None for v in explicit) and None in explicit:
    raise DistributedError('give all of --coordinator, --num_processes and --process_id (a hand '
                           'launch) or none of them (auto-detection, e.g. under SLURM srun)')
  if num_processes is not None:
    if num_processes < 1:
      raise DistributedError(f'--num_processes must be >= 1, got {num_processes}')
    if not 0 <= process_id < num_processes:
      raise DistributedError(f'--process_id must be in [0, {num_processes}) for '
                             f'--num_processes={num_processes}, got {process_id}')
    _, port = parse_address(coordinator)
    if process_id == 0 and not _port_is_free(port):
      raise DistributedError(
          f'port {port} of this machine is in use, so process 0 cannot run the coordinator '
          f'there; choose another port in --coordinator')
  # CPU collectives across processes (no effect on GPU/TPU); must precede backend start-up.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  where = coordinator or os.environ.get('JAX_COORDINATOR_ADDRESS') or 'the auto-detected coordinator'
  expected = f'all {num_processes} processes' if num_processes else 'all processes'
  cancel = _watchdog(timeout_s, (
      f'distributed start-up did not complete within {timeout_s:g} s: {expected} must connect to '
      f'{where}. Check that process 0 runs and is reachable there, that every process got the '
      f'same --num_processes and its own --process_id, and that all were started'))
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
        # JAX's own limits lie beyond the watchdog's, so that the one-line message comes first.
        initialization_timeout=int(timeout_s) + 30,
        heartbeat_timeout_seconds=max(int(timeout_s), 10))
  except (ValueError, RuntimeError) as err:
    cancel()
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if coordinator is None and 'coordinator_address' in text:
      raise DistributedError(
          '--distributed found no cluster to auto-detect (no SLURM job, cloud TPU or '
          'JAX_COORDINATOR_ADDRESS); give --coordinator, --num_processes and --process_id') from err
    if 'RPC server' in text:
      raise DistributedError(f'cannot start the coordinator service at {where}: {text}') from err
    raise DistributedError(f'distributed start-up failed: {text}') from err
  cancel()
  _state.update(active=True, finished=False, timeout_s=timeout_s)
  threading.Thread(target=_watch_failures, name='pixdiff-failure-watcher', daemon=True).start()
  if num_processes is not None and jax.process_count() != num_processes:
    raise DistributedError(
        f'--num_processes={num_processes} but the coordinator at {where} runs a job of '
        f'{jax.process_count()} processes; give every process the same --num_processes')


def is_active() -> bool:
  """Whether :func:`initialize` has connected this process to a multi-process job."""
  return _state['active']


def is_main_process() -> bool:
  return jax.process_index() == 0


def _watch_failures() -> None:
  """Polls the key-value store; another process's failure ends this one with its message."""
  me = jax.process_index()
  while not _state['finished']:
    client = _client()
    if client is None:
      return
    try:
      value = client.key_value_try_get(_FAILED_KEY)
    except Exception as err:  # pylint: disable=broad-except
      text = str(err)
      if 'NOT_FOUND' in text or 'not found' in text.lower():
        time.sleep(1.0)
        continue
      if _state['finished']:
        return
      _die(f'lost the connection to the coordinator (did process 0 end?): '
           f'{text.splitlines()[0] if text else type(err).__name__}')
      return
    who, _, message = value.partition('\t')
    if who != str(me) and not _state['finished']:
      _die(f'process {who} failed: {message}')
    time.sleep(1.0)


def report_failure(message: str) -> None:
  """Publishes this process's failure so every other process ends with it (no-op if inactive).

  Process 0 runs the coordinator service: it waits a moment so that the others can read the
  message before the service goes away with it.
  """
  if not _state['active']:
    return
  client = _client()
  if client is None:
    return
  try:
    client.key_value_set(_FAILED_KEY, f'{jax.process_index()}\t{message}')
  except Exception:  # pylint: disable=broad-except  (another process failed first)
    pass
  if jax.process_index() == 0:
    time.sleep(2.5)


def exit_after_failure(code: int = 2) -> None:
  """Ends a failed process without JAX's shutdown barrier (which would wait for the others)."""
  sys.stdout.flush()
  sys.stderr.flush()
  if _state['active']:
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def finish() -> None:
  """Marks a normal end: the failure watcher stops before JAX shuts the runtime down."""
  _state['finished'] = True


def barrier(name: str, *, timeout_s: float | None = None) -> None:
  """All processes wait here for each other; ``DistributedError`` naming ``name`` on timeout."""
  if not _state['active'] or jax.process_count() == 1:
    return
  timeout_s = _state['timeout_s'] if timeout_s is None else timeout_s
  try:
    _client().wait_at_barrier(f'pixdiff_jax/{name}', int(timeout_s * 1000))
  except Exception as err:  # pylint: disable=broad-except
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise DistributedError(
        f'not every process reached "{name}" within {timeout_s:g} s: {text}') from err


def my_items(n: int) -> list[int]:
  """Indices of the items (of ``n``) this process computes: ``p, p + P, p + 2P, ...``."""
  return list(range(jax.process_index(), n, jax.process_count()))


def gather_items(local: np.ndarray, n: int) -> np.ndarray:
  """Every process's items in order: ``local [len(my_items(n)), ...] -> [n, ...]`` everywhere.

  A collective: every process must call it with the same ``n`` and item shape.
  """
  num = jax.process_count()
  if num == 1:
    return np.asarray(local)[:n]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  per = -(-n // num)
  local = np.asarray(local)
  padded = np.zeros((per,) + local.shape[1:], local.dtype)
  padded[:len(local)] = local
  everything = np.asarray(multihost_utils.process_allgather(padded, tiled=False))  # [P, per, ...]
  # Item i = j * P + p sits at everything[p, j].
  ordered = np.swapaxes(everything, 0, 1).reshape((per * num,) + local.shape[1:])
  return ordered[:n]
