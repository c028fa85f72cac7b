"""Data: our HDF5 layout, the synthetic default, in-memory batches and perturbations."""
