"""`python -m refdecomp.kernels`: the CPU Numba compiles for and the micro-kernel variant chosen
for it."""
from .isa import describe

print(describe())
