"""The shared configuration structure and defaults of every pixdiff_jax experiment.

They live in the package (``pixdiff_jax/config/defaults.py``, every field documented there), so
that an installed package resolves configs saved by older versions without this folder; the
experiment configs here start from ``get_default_config()`` and override fields.
"""
from pixdiff_jax.config.defaults import get_default_config  # noqa: F401
