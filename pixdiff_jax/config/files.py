"""Config files and the workdir's stored config: load a config file by path, save and load
``WORKDIR/config.json``."""
from __future__ import annotations

import json
import os

import ml_collections

from pixdiff_jax.config.checks import tuples_from_json


def config_path(workdir: str) -> str:
  return os.path.join(workdir, 'config.json')


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(config_path(workdir), 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = config_path(workdir)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir!r} the --workdir of a training run?')
  with open(path, encoding='utf-8') as f:
    config = ml_collections.ConfigDict(tuples_from_json(json.load(f)))
  if 'distill' not in config:  # trained before the distill stage existed: none (steps = 0)
    config.distill = _default_config().distill
    config.distill.steps = 0
  return config


def _default_config() -> ml_collections.ConfigDict:
  """``configs/default.py``'s ``get_default_config()`` (for sections old workdirs lack)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return load_config_module(os.path.join(root, 'configs', 'default.py')).get_default_config()


def load_config_module(path: str):
  """Imports a config file by path (it need not be on ``sys.path``)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path).resolve()
  if not path.exists():
    raise FileNotFoundError(f'config file {path} not found')
  spec = importlib.util.spec_from_file_location(f'_pixdiff_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling_config(config_file: str, name: str):
  """The module ``<dir of config_file>/<name>.py``.

  Config files use it to build on ``default.py`` (or another config) from any working
  directory: ml_collections' ``config_flags`` loads a config by path, so ``configs`` is not
  necessarily an importable package.
  """
  return load_config_module(os.path.join(os.path.dirname(os.path.abspath(config_file)),
                                         f'{name}.py'))


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of the config file at ``path``."""
  return load_config_module(path).get_config()
