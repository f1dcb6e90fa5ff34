"""JAX's persistent compilation cache, set up the same way by every entry point: ``main.py``
(``--compilation_cache``), ``python -m pixdiff_jax.metrics`` and the test suite
(``tests/conftest.py``), so that a program compiled by one is read back by the others."""
from __future__ import annotations

# Programs that compile faster than this are not written to the cache (reading one back costs a
# few milliseconds; docs/performance.md, "The test suite's time").
MIN_COMPILE_SECS = 0.5


def use(directory: str) -> None:
  """Turns on the persistent compilation cache in ``directory``."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECS)
