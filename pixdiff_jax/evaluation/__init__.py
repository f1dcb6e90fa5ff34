"""Evaluation: sample quality, cost and speed of sampler settings (``evaluator``) and the paper's
figures (``figures``). The evaluation API is re-exported from ``evaluator``."""
from pixdiff_jax.evaluation.evaluator import *  # noqa: F401,F403
from pixdiff_jax.evaluation.evaluator import __all__  # noqa: F401
