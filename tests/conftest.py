"""Test setup: 2 host CPU devices (for pmap tests) and JAX's persistent compilation cache.

Both must be set before JAX initialises its backends, which is why they live here.
"""
import os
import pathlib
import sys

os.environ.setdefault('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=2'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('PIXDIFF_JAX_CACHE', str(ROOT / '.jax_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
