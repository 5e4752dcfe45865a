"""The graph ops: `registry` (every op's rules, declared once in `defs/`), `reference` (the NumPy
executable specification), `lowering` (bindings to the Numba kernels), `channels` (compaction
rules) and `rules` (helpers shared by several ops' rules)."""
