"""Learned policies of RecMG: features, the caching and prefetching models, the Voyager baseline,
training, checkpoints. Importing :mod:`recmgd.models.policies` registers the policies."""
