"""The README's set-up commands and CI's script are the same commands (CI runs the README)."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_commands():
  readme = (ROOT / 'README.md').read_text()
  section = readme.split('## Set-up on a fresh Debian/Ubuntu machine', 1)[1].split('\n## ', 1)[0]
  return [block.strip() for block in re.findall(r'```bash\n(.*?)```', section, re.S)]


def test_ci_runs_the_readme_test_command_verbatim():
  install_and_train, run_tests = _setup_commands()
  ci_lines = (ROOT / '.ci' / 'run').read_text().splitlines()
  assert run_tests in ci_lines
  assert run_tests.endswith('&& python -m pytest -q -n 2 --dist loadfile --durations=20 tests')
  # Both README commands share one set-up (apt, venv, constrained install).
  assert install_and_train.split(' && python main.py', 1)[0] == run_tests.rsplit(' && ', 1)[0]
  assert install_and_train.endswith('&& python main.py && python main.py --mode sample')


@pytest.mark.parametrize('name', ['constraints.txt', 'constraints-py312.txt'])
def test_constraints_pin_every_requirement(name):
  """Each constraints file pins each install requirement of setup.py (and pytest) to one
  version (constraints-py312.txt: also jax-cuda12-plugin, for the cuda12 extra)."""
  pins = {}
  for line in (ROOT / name).read_text().splitlines():
    if line and not line.startswith('#'):
      name, version = line.split('==')
      pins[re.sub(r'[-_.]+', '-', name.lower())] = version
  setup = (ROOT / 'setup.py').read_text()
  install = re.search(r'install_requires=\[(.*?)\]', setup, re.S).group(1)
  required = re.findall(r'"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?>=', install) + ['pytest',
                                                                                 'pytest-xdist']
  assert len(required) > 10
  if name == 'constraints-py312.txt':
    required += ['jaxlib', 'jax-cuda12-plugin']
  for req in required:
    assert re.sub(r'[-_.]+', '-', req.lower()) in pins, req
  assert 'pixdiff-jax' not in pins
