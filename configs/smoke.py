"""Tiny networks on a slice of Fashion-MNIST that run every stage (VAE, reverse, distill),
checkpoint and sample.

For tests and quick checks; the samples mean nothing. The VAE and the U-Net have no residual
blocks (only the heads do): most of a test's time is compiling these networks (docs/performance.md,
"The test suite's time"); the unit tests check the residual blocks.
"""
from pixdiff_jax.config import sibling_config


def get_config():
  config = sibling_config(__file__, 'default').get_default_config()
  config.data.dataset = 'fashion_mnist'
  config.data.image_size = 32
  config.data.num_channels = 1
  config.data.max_examples = 512

  config.diffusion.num_steps = 8
  config.diffusion.gamma = 4.0
  config.diffusion.target = 'x0'  # the distill stage's heads regress onto clean images

  config.vae.ch = 8
  config.vae.ch_mult = (1, 1, 2, 2)
  config.vae.num_res_blocks = 0
  config.vae.latent_dim = 16
  config.vae.num_groups = 4

  config.model.ch = 8
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 0
  config.model.attn_resolutions = ()
  config.model.num_groups = 4
  config.model.head_ch = 4
  config.model.head_num_res_blocks = 1

  config.training.batch_size = 8
  config.training.vae_steps = 6
  config.training.reverse_steps = 6
  config.training.steps_per_dispatch = 1
  config.training.log_every = 2
  config.training.checkpoint_every = 4
  config.training.snapshot_every = 6
  config.training.keep_checkpoints = 2

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 2

  config.distill.steps = 4
  config.distill.batch_size = 8
  config.distill.num_pairs = 16
  config.distill.teacher_batch = 8
  config.distill.lr = 1e-3

  config.sampling.preset = 'consistent'
  config.sampling.network_calls = 2
  config.sampling.batch_size = 8
  return config
