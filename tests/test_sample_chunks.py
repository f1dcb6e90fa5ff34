"""Sampling at scale: the shared generator (batch b uses fold_in(key, b)), chunked writing that
resumes bit-identically, the time and disk limits, and sample mode end to end on the smoke run.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from cli_testutil import error_lines, run_main
from pixdiff_jax import data, errors
from pixdiff_jax.cli import sample_mode
from pixdiff_jax.cli.errors import UsageError
from pixdiff_jax.sampling import generate

SHAPE = (2, 4, 4, 1)  # one batch


def _fn(variables, key):
  return jax.random.uniform(key, SHAPE) * variables['scale']


def _expected(seed: int, n: int) -> np.ndarray:
  key = jax.random.PRNGKey(seed)
  batches = [data.to_uint8(np.asarray(_fn({'scale': 1.0}, jax.random.fold_in(key, b))))
             for b in range(-(-n // SHAPE[0]))]
  return np.concatenate(batches)[:n]


def _store(directory, n=7, seed=3, chunk_images=4):
  return generate.ChunkStore(str(directory), {'seed': seed}, num_images=n,
                             batch_size=SHAPE[0], chunk_images=chunk_images,
                             image_shape=SHAPE[1:])


@pytest.fixture(scope='module')
def gen():
  return generate.Generator(_fn, {'scale': 1.0}, seed=3, image_shape=SHAPE)


def test_generator_draws_batch_b_with_fold_in_key_b(gen):
  images = generate.generate(gen, 7)
  assert images.shape == (7, 4, 4, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(images, _expected(3, 7))
  assert len(gen.batch_seconds) >= 4 and gen.compile_seconds > 0


def test_an_interrupted_request_resumes_from_its_chunks_bit_identically(gen, tmp_path):
  store = _store(tmp_path / 'x.chunks')  # 7 images, batches of 2: 4 batches, 2 per chunk
  assert (store.num_batches, store.num_chunks, store.chunk_images) == (4, 2, 4)
  assert store.read_done() == [] and store.prepare() is None
  store.write(0, gen.batches(store.batches_of(0)))
  # ... interrupted here. A new run of the same request finds chunk 0 and makes only chunk 1.
  again = _store(tmp_path / 'x.chunks')
  assert again.read_done() == [0]
  with pytest.raises(ValueError, match=r'chunks \[1\] of 2 are not written yet'):
    next(generate.read_chunks(again.directory))
  before = len(gen.batch_seconds)
  sample_mode.run_chunks(gen, again, [1], max_hours=None, yes=False)
  assert len(gen.batch_seconds) - before == 2  # chunk 0 was not drawn again
  assert [c.shape[0] for c in generate.read_chunks(again.directory)] == [4, 3]  # trimmed at n
  again.assemble(str(tmp_path / 'x.npz'))
  with np.load(tmp_path / 'x.npz') as f:
    np.testing.assert_array_equal(f['images'], _expected(3, 7))
  np.testing.assert_array_equal(again.first_images(5), _expected(3, 5))
  # Another request under the same name (another seed): its chunks are discarded, with a note.
  other = _store(tmp_path / 'x.chunks', seed=4)
  assert other.read_done() == []
  assert 'its 2 chunks belong to another request' in other.prepare()
  assert os.listdir(other.directory) == ['manifest.json']


def test_a_full_disk_while_writing_chunks_keeps_the_written_ones(gen, tmp_path):
  store = _store(tmp_path / 'x.chunks')
  store.read_done()
  store.prepare()
  (tmp_path / 'x.chunks' / 'chunk_00001.npy.tmp').symlink_to('/dev/full')  # ENOSPC on write
  with pytest.raises(errors.WriteError) as caught:
    sample_mode.run_chunks(gen, store, [0, 1], max_hours=None, yes=False)
  assert str(caught.value) == (
      f'cannot write sample chunk {store.directory}/chunk_00001.npy: {os.strerror(28)}; 1 of 2 '
      f'chunks are written in {store.directory} (kept); free space and run the same command to '
      'resume')
  assert sorted(os.listdir(store.directory)) == ['chunk_00000.npy', 'manifest.json']
  assert _store(tmp_path / 'x.chunks').read_done() == [0]


def test_time_and_disk_limits():
  kwargs = dict(n=10_000_000, batches=1_250_000, batch=8, seconds_per_batch=0.22, processes=1,
                chunks_dir='D')
  with pytest.raises(UsageError) as caught:
    sample_mode.check_time(max_hours=None, yes=False, **kwargs)
  assert str(caught.value) == (
      '--num_samples 10000000 would take about 76.4 h (1250000 batches of 8 at 0.22 s each, '
      'measured on the first batch), more than the 24 h limit for requests without --yes or '
      '--max_hours; add --yes to go ahead or --max_hours 77 (an interrupted request resumes '
      'from its chunks in D)')
  assert sample_mode.check_time(max_hours=None, yes=True, **kwargs) == pytest.approx(76.39, 1e-3)
  assert sample_mode.check_time(max_hours=80, yes=False, **kwargs) < 80
  with pytest.raises(UsageError, match='more than the --max_hours 10 limit'):
    sample_mode.check_time(max_hours=10, yes=True, **kwargs)
  # Two processes share the batches: half the time.
  assert sample_mode.check_time(max_hours=40, yes=False, **{**kwargs, 'processes': 2}) < 40
  sample_mode.check_disk(n=5, needed=10, free=20, where='S', yes=False)
  sample_mode.check_disk(n=5, needed=30, free=20, where='S', yes=True)
  with pytest.raises(UsageError, match=r'^--num_samples 5 needs about 30 kB in S but 20 kB'):
    sample_mode.check_disk(n=5, needed=30_000, free=20_000, where='S', yes=False)


def test_refused_after_the_first_batch_leaves_no_chunk_folder(gen, tmp_path):
  store = _store(tmp_path / 'x.chunks', n=4000)
  store.read_done()
  store.prepare()
  with pytest.raises(UsageError, match='more than the --max_hours 1e-09 limit'):
    sample_mode.run_chunks(gen, store, list(range(store.num_chunks)), max_hours=1e-9, yes=False)
  assert not os.path.exists(store.directory)


def test_sample_mode_writes_chunks_resumes_and_assembles(smoke_copy):
  samples = smoke_copy / 'samples'
  args = ['--workdir', smoke_copy, '--mode', 'sample', '--num_samples', '20', '--chunk_images',
          '8', '--sample_name', 's']
  # Beyond --max_npz_gb the chunk folder is the output.
  run = run_main(*args, '--max_npz_gb', '0', timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  chunks = samples / 's.chunks'
  assert (f'sampling 20 images: 3 batches of 8 in 3 chunks of 8 images (20.5 kB) in {chunks}'
          in run.stderr)
  assert 'first batch: ' in run.stderr and 'sample: 3/3 (100%)' in run.stderr
  summary = json.loads(run.stdout)
  assert summary['npz'] is None and summary['chunks'] == str(chunks)
  images = np.concatenate(list(generate.read_chunks(str(chunks))))
  assert images.shape == (20, 32, 32, 1) and images.std() > 0
  # As if interrupted after two chunks: the same command makes the third one only.
  manifest = json.loads((chunks / 'manifest.json').read_text())
  (chunks / 'manifest.json').write_text(json.dumps({**manifest, 'done': [0, 1]}))
  (chunks / 'chunk_00002.npy').unlink()
  run = run_main(*args, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'resuming: 2 chunks are already written' in run.stderr
  summary = json.loads(run.stdout)
  assert (summary['resumed_chunks'], summary['npz']) == (2, str(samples / 's.npz'))
  with np.load(samples / 's.npz') as f:
    np.testing.assert_array_equal(f['images'], images)
  assert not chunks.exists() and (samples / 's.png').exists()
  # An absurd request is refused before anything is compiled or written.
  run = run_main('--workdir', smoke_copy, '--mode', 'sample', '--num_samples', '10000000000',
                 timeout=300)
  assert run.returncode == 2 and 'Traceback' not in run.stderr, run.stderr[-3000:]
  line, = error_lines(run.stderr)
  assert line.startswith('error: --num_samples 10000000000 needs about 10.2 TB in '
                         f'{samples} but '), line
  assert line.endswith('add --yes to start anyway (an interrupted request resumes from its '
                       'chunks)')
  assert 'first batch' not in run.stderr
  assert sorted(p.name for p in samples.iterdir() if p.name.endswith('.chunks')) == []
  shutil.rmtree(samples)
