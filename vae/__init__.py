"""The convolutional VAE and its trainer (issue 3; not yet implemented)."""
