"""The paper's convolutional VAE, its perceptual loss and its trainer (`vae-train`).

Data flow: synthgen shards -> vae.data (pool, epoch plan, feeding) -> vae.augment -> vae.model +
vae.losses -> vae.train (the loop) -> vae.checkpoint (checkpoint -> model for later tools).
Settings (vae.config) and the command line (vae.cli) need no torch; the rest is imported on use.
"""


def __getattr__(name):
    if name == "load_model":  # the entry point for downstream code: vae.load_model("runs/x/best.pt")
        from vae.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'vae' has no attribute {name!r}")
