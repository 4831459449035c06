"""Data: prompt datasets, K-repeat sampling, and the on-disk prompt-embedding cache."""
