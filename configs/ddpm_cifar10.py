"""DDPM baseline on CIFAR-10 (Ho et al. 2020): 35.7M-parameter U-Net, linear betas
1e-4..0.02, T = 1000, data in [-1, 1]; the same backbone code as the pixel-aware model."""
from pixdiff_jax.config_utils import sibling_config


def get_config():
  config = sibling_config(__file__, 'default').get_default_config()
  config.method = 'ddpm'
  config.data.dataset = 'tfds:cifar10'
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.random_flip = True

  config.diffusion.num_steps = 1000
  config.diffusion.schedule = 'linear'
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02

  config.model.name = 'unet'
  config.model.ch = 128
  config.model.ch_mult = (1, 2, 2, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.1
  config.model.num_groups = 32

  config.training.batch_size = 128
  config.training.vae_steps = 0
  config.training.reverse_steps = 800_000
  config.training.steps_per_dispatch = 5
  config.training.log_every = 100
  config.training.checkpoint_every = 10_000
  config.training.snapshot_every = 50_000
  config.training.ema_decay = 0.9999

  config.optim.lr = 2e-4
  config.optim.warmup_steps = 5000

  config.sampling.preset = 'custom'
  config.sampling.sampler = 'ddpm'
  config.sampling.num_steps = 100
  config.sampling.eta = 0.0
  config.sampling.clip_denoised = True
  config.sampling.batch_size = 256
  return config
