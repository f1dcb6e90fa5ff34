"""The math of the method, jax only: forward schedules (``schedules``) and the reverse samplers
of the pixel-aware model and of the DDPM family (``samplers``)."""
