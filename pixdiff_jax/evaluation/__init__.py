"""Evaluation: which sampler settings are scored (``settings``), sampling and scoring them
(``evaluator``), the results files and tables (``report``) and the paper's figures (``figures``).
The evaluation API is re-exported here."""
from pixdiff_jax.evaluation.evaluator import Scorer, check_inception_weights, evaluate  # noqa: F401
from pixdiff_jax.evaluation.report import (compare, method_label, read_json,  # noqa: F401
                                          results_markdown, write_json)
from pixdiff_jax.evaluation.settings import (DEFAULT_SETTINGS, DISTILLED_SETTINGS,  # noqa: F401
                                            EVAL_DIR, RESULT_COLUMNS, EvalError, Setting,
                                            parse_setting, sample_counts, settings_for)
