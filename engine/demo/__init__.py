"""The whole job on the built-in synthetic data, as ``make demo`` runs it."""
