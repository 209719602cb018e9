"""Datasets, audio features and the HDF5 feature store."""
