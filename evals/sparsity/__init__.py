"""The ``sparsity`` eval: activation density, dead units and noise robustness of a classifier, a
maze policy or a MiniGrid policy (``scripts/compare_sparse.py`` sets a dense and a sparse network
side by side with it)."""
