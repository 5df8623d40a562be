"""The paper's convolutional VAE, its perceptual loss and its trainer (`vae-train`).

Data flow: synthgen shards -> vae.data (pool, epoch plan, feeding) -> vae.augment -> vae.model +
vae.losses -> vae.train (the loop) -> vae.checkpoint (checkpoint -> model for later tools).
"""
from vae.checkpoint import load_model  # noqa: F401  (the entry point for downstream code)
