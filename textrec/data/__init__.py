"""Datasets: LMDB reading and writing, image loading and preprocessing, the benchmark registry."""
