"""Config files and the workdir's stored config: load a config file by path, save and load
``WORKDIR/config.json``."""
from __future__ import annotations

import json
import os

import ml_collections

from pixdiff_jax.config.checks import tuples_from_json
from pixdiff_jax.config.defaults import get_default_config
from pixdiff_jax.errors import ConfigError, InputError, NotFoundError, writing


def config_path(workdir: str) -> str:
  return os.path.join(workdir, 'config.json')


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes ``WORKDIR/config.json`` (whole or not at all: a temporary file, then a rename)."""
  path = config_path(workdir)
  with writing(path, 'config'):
    os.makedirs(workdir, exist_ok=True)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(path + '.tmp', path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = config_path(workdir)
  if not os.path.exists(path):
    raise NotFoundError(f'{path} not found: is {workdir!r} the --workdir of a training run?')
  with open(path, encoding='utf-8') as f:
    try:
      stored = json.load(f)
    except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
      raise InputError(f'{path} is not a readable config ({err}); restore it, or give the config '
                       'it was trained with as --config') from err
  config = ml_collections.ConfigDict(tuples_from_json(stored))
  if 'distill' not in config:  # trained before the distill stage existed: none (steps = 0)
    config.distill = get_default_config().distill
  return config


def load_config_module(path: str):
  """Imports a config file by path (it need not be on ``sys.path``)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path).resolve()
  if not path.exists():
    raise NotFoundError(f'config file {path} not found')
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


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict, source: str
                    ) -> ml_collections.ConfigDict:
  """Sets ``{'a.b': value}`` overrides (``--config.a.b=value``) on ``config`` in place.

  Each path must name an existing field of ``config`` (``source`` says where it came from in
  the error); tuple fields keep their type (JSON stores them as lists).
  """
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for name in parents:
      node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ConfigError(f'--config.{dotted}: no such field in {source}')
    node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], tuple) else value
  return config

