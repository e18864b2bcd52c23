"""Training and evaluation data, read in place from ``T2L_DATA_DIR`` (never copied into the repository)."""
