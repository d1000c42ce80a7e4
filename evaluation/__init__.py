"""Measuring the pipeline: reconstruction quality, class fidelity and distances of generated samples to real ones."""
