"""Pieces every command shares: the settings layer, errors and exit codes, atomic writes, random streams.

Light on purpose (no torch, no h5py): a command parses and checks its arguments before it imports
anything heavy, so a bad value is refused at once.
"""

__version__ = "0.3.0"  # of the whole toolkit: synthgen, vae-train and the analyses
