"""Op implementations: `reference` is the NumPy executable specification of every graph op."""
