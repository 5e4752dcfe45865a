"""Numba kernels for the interpreter's hot ops (convolution, pooling, dense, add) with masking
and per-group recording fused into the same pass, plus the sliding-window index maps."""
