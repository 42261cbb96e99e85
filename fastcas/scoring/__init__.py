"""Attributes and CAS: the vocabulary, pixel and CLIP encoders, bins, the CAS computation and the scoring run over a
dataset. Imports core, dataset, sampling, loading."""
