"""Configs: checks with messages that name the field (``checks``), and config files and the
workdir's stored ``config.json`` (``files``). Everything public is re-exported here::

    from pixdiff_jax import config as config_lib
    config_lib.validate_config(cfg); config_lib.load_config(workdir)
"""
from pixdiff_jax.config.checks import (DISTILLED_PRESETS, LOSS_WEIGHTINGS,  # noqa: F401
                                       METHODS, PRIORS, SAMPLERS, SAMPLING_PRESETS,
                                       SCALE_SOURCES, VAE_LOSS_SPACES,
                                       architecture_differences, check_compatible,
                                       one_head_baseline_config, sampler_settings,
                                       tuples_from_json, validate_config)
from pixdiff_jax.config.defaults import (default_eval_config, eval_config_for,  # noqa: F401
                                         get_default_config)
from pixdiff_jax.config.files import (apply_overrides, config_path, load_config,  # noqa: F401
                                      load_config_file, load_config_module, save_config,
                                      sibling_config)
from pixdiff_jax.config.stages import TEACHER_STAGE, has_distill_stage, stages_for  # noqa: F401
