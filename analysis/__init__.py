"""Area-versus-number analysis and the subitizing readout (issue 4; not yet implemented)."""
