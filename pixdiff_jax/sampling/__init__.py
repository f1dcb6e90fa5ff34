"""Sampling API: ``get_sample_fn`` (a pure, jittable sampler built from a config) and
``load_sampler`` (the same, with the networks of a trained workdir)."""
from pixdiff_jax.sampling.sample_fn import (SampleFn, get_sample_fn,  # noqa: F401
                                            get_scale_prior_fn, load_sampler, to_unit_interval)
