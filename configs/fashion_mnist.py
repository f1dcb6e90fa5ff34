"""Fashion-MNIST on 2 CPU cores: the offline main job (both stages + samples in <= 20 min).

Sized for the budget rather than for the paper: small networks, light heads (no per-head
residual blocks), T = 100 with the paper's 1:10 ratio gamma = 10, a short warmup and EMA
warm-up. Data: the Debian package ``dataset-fashion-mnist`` (28x28 padded to 32x32).
"""
from configs import default


def get_config():
  config = default.get_default_config()
  config.data.dataset = 'fashion_mnist'
  config.data.image_size = 32
  config.data.num_channels = 1

  config.diffusion.num_steps = 100
  config.diffusion.gamma = 10.0
  config.diffusion.target = 'increment'

  config.vae.ch = 32
  config.vae.ch_mult = (1, 2, 2, 2)
  config.vae.num_res_blocks = 1
  config.vae.latent_dim = 64
  config.vae.kl_weight = 1e-3

  config.model.ch = 32
  config.model.ch_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (8,)
  config.model.head_ch = 16
  config.model.head_num_res_blocks = 0
  config.model.head_attention = False

  config.training.batch_size = 64
  config.training.vae_steps = 1500
  config.training.reverse_steps = 2500
  config.training.steps_per_dispatch = 10
  config.training.log_every = 50
  config.training.checkpoint_every = 500
  config.training.snapshot_every = 2500
  config.training.ema_decay = 0.999

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100

  config.sampling.preset = 'consistent'
  config.sampling.network_calls = 10
  config.sampling.batch_size = 64
  return config
