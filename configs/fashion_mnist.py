"""Fashion-MNIST on 2 CPU cores: the offline main job (both stages + samples in <= 20 min).

Sized for the budget rather than for the paper (measured on the 2-core machine, batch 32; see
docs/results.md section 3): narrow networks and light heads (no per-head residual blocks);
T = 10 rather than 50, because a train step costs 0.77 s at T = 10 and 1.44 s at T = 50 and
each head is trained as the diagonal head ``j = i`` five times as often; the paper's cumulative
head target; the VAE fitted in image space (``vae.loss_space='x0'``: the scale-space MSE hardly
sees bright pixels); a high learning rate with a short warmup, EMA warm-up. Sampling: the
``consistent`` preset with one network call per step. Data: the Debian package
``dataset-fashion-mnist`` (28x28 padded to 32x32).
"""
from pixdiff_jax.config_utils import sibling_config


def get_config():
  config = sibling_config(__file__, 'default').get_default_config()
  config.data.dataset = 'fashion_mnist'
  config.data.image_size = 32
  config.data.num_channels = 1

  config.diffusion.num_steps = 10
  config.diffusion.gamma = 10.0
  config.diffusion.target = 'cumulative'

  config.vae.ch = 16
  config.vae.ch_mult = (1, 2, 2, 2)
  config.vae.num_res_blocks = 1
  config.vae.latent_dim = 32
  config.vae.kl_weight = 1e-3
  config.vae.loss_space = 'x0'

  config.model.ch = 16
  config.model.ch_mult = (1, 2, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (8,)
  config.model.head_ch = 8
  config.model.head_num_res_blocks = 0
  config.model.head_attention = False

  config.training.batch_size = 32
  config.training.vae_steps = 1000
  config.training.reverse_steps = 1000
  config.training.steps_per_dispatch = 1  # see train.get_p_train_step (CPU)
  config.training.log_every = 20
  config.training.checkpoint_every = 100
  config.training.snapshot_every = 100000
  config.training.ema_decay = 0.995

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 50

  config.sampling.preset = 'consistent'
  config.sampling.network_calls = 10
  config.sampling.batch_size = 64
  return config
