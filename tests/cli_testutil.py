"""Running ``main.py`` in a subprocess the way a user does (one CPU device, shared XLA cache)."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FMNIST = pathlib.Path('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz')


# Every process of the suite compiles its XLA:CPU programs at LLVM optimisation level 0 and with
# XLA's older loop-fusion emitters: the suite's time is mostly compilation of programs that then
# run a few steps (docs/performance.md, "The test suite's time"). In-process tests and main.py
# subprocesses use the same flags, so what one computes equals what the other computes, bit for
# bit, as with the default flags.
_LEVEL_0 = '--xla_backend_optimization_level=0'
# Newer XLA (jaxlib 0.11.2) has only the new emitters, and an unknown flag in XLA_FLAGS aborts.
_OLDER_EMITTERS = '--xla_cpu_use_fusion_emitters=false'


def _suite_xla_flags() -> str:
  """``_LEVEL_0``, plus ``_OLDER_EMITTERS`` where this XLA knows the flag (a subprocess tries it
  once; the answer is passed on to the suite's other processes in the environment)."""
  known = os.environ.get('PIXDIFF_SUITE_XLA_FLAGS')
  if known is None:
    probe = subprocess.run(
        [sys.executable, '-c', 'import jax; jax.devices()'], capture_output=True, timeout=300,
        env=dict(os.environ, XLA_FLAGS=_OLDER_EMITTERS, JAX_PLATFORMS='cpu'))
    if probe.returncode != 0 and 'Unknown flag' not in probe.stderr.decode(errors='replace'):
      raise RuntimeError(f'JAX does not start on the CPU: {probe.stderr.decode()[-2000:]}')
    known = f'{_LEVEL_0} {_OLDER_EMITTERS}' if probe.returncode == 0 else _LEVEL_0
    os.environ['PIXDIFF_SUITE_XLA_FLAGS'] = known
  return known


SUITE_XLA_FLAGS = _suite_xla_flags()


def xla_flags(devices: int | None = None) -> str:
  """``XLA_FLAGS`` for a process of the suite: ``devices`` forced host devices (one if None)."""
  forced = f' --xla_force_host_platform_device_count={devices}' if devices else ''
  return SUITE_XLA_FLAGS + forced


def main_env(env=None) -> dict:
  env = dict(os.environ if env is None else env)
  # One CPU device (the user's default), not the test session's two.
  env['XLA_FLAGS'] = xla_flags()
  env.pop('PIXDIFF_TRACEBACK', None)
  return env


def main_cmd(*args) -> list[str]:
  cache = os.environ.get('PIXDIFF_JAX_CACHE', str(ROOT / '.jax_cache'))
  return [sys.executable, str(ROOT / 'main.py'), f'--compilation_cache={cache}', *map(str, args)]


def run_main(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
  return subprocess.run(main_cmd(*args), cwd=ROOT, env=main_env(env), capture_output=True,
                        text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith('error:')]
