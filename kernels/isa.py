"""Which instruction set the convolution micro-kernels are generated for, chosen once at import.

The choice follows the CPU that Numba compiles for (its target CPU name and feature string,
which honour NUMBA_CPU_NAME and NUMBA_CPU_FEATURES), not the CPU Python runs on: a register
tile sized for 32 AVX-512 registers spills on a target with 16 AVX2 registers, and one sized
for AVX2 leaves half of AVX-512 idle. Every variant computes the same function on any CPU;
only its speed depends on the match.

    python -m refdecomp.kernels   # prints the target, the chosen variant and its tiles

`ENVIRONMENTS` holds the settings that make Numba (and TensorFlow's oneDNN, for benchmarks)
generate code for an instruction set on a CPU that has at least that one.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Isa:
    """An instruction-set family the generator sizes register tiles for."""

    name: str
    vector_floats: int      # float32 lanes per vector register
    registers: int          # vector registers
    description: str


ISAS = {
    "avx512": Isa("avx512", 16, 32, "AVX-512 (32 x 512-bit registers, FMA)"),
    "avx2": Isa("avx2", 8, 16, "AVX2 + FMA (16 x 256-bit registers)"),
    "portable": Isa("portable", 4, 16,
                    "portable (128-bit vectors: SSE, NEON, anything else)"),
}

#: CPU names whose default features include AVX-512F or AVX2 + FMA (LLVM's names), for a
#: target given by name alone (empty feature string)
_AVX512_CPUS = frozenset({
    "knl", "knm", "skylake-avx512", "skx", "cascadelake", "cooperlake", "cannonlake",
    "icelake-client", "icelake-server", "tigerlake", "rocketlake", "sapphirerapids",
    "emeraldrapids", "graniterapids", "graniterapids-d", "diamondrapids", "znver4", "znver5",
    "x86-64-v4"})
_AVX2_CPUS = frozenset({
    "haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "arrowlake",
    "arrowlake-s", "lunarlake", "pantherlake", "gracemont", "sierraforest", "grandridge",
    "clearwaterforest", "znver1", "znver2", "znver3", "bdver4", "x86-64-v3"})

#: environment that makes Numba target an instruction set on a CPU that has at least that one,
#: and holds TensorFlow's oneDNN to it; "native" is the machine as it is (the child process
#: checks that `ISA` came out as asked)
ENVIRONMENTS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {
        "NUMBA_CPU_NAME": "haswell",
        # the name alone keeps the host's features (AVX-512 included): list haswell's
        "NUMBA_CPU_FEATURES": "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,"
                              "+fxsr,+lzcnt,+mmx,+movbe,+popcnt,+sahf,+sse,+sse2,+sse3,"
                              "+sse4.1,+sse4.2,+ssse3,+xsave",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    },
    # Numba keeps the host CPU (and its tuning): AVX-512 code runs only on an AVX-512 CPU
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}


def numba_target() -> tuple[str, str]:
    """(CPU name, feature string) that Numba's JIT compiles for, as its code generator
    computes them (numba.core.codegen.JITCPUCodegen)."""
    import llvmlite.binding as ll
    from numba.core import codegen, config

    name = config.CPU_NAME if config.CPU_NAME is not None else ll.get_host_cpu_name()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None \
        else codegen.get_host_cpu_features()
    return name, features


def choose(cpu_name: str, features: str) -> str:
    """The variant for a target. As in LLVM, the feature string modifies the CPU's own
    defaults (Numba's host string lists every feature, so it alone decides there)."""
    name = cpu_name.lower()
    have = {"avx512f", "avx2", "fma"} if name in _AVX512_CPUS else \
        {"avx2", "fma"} if name in _AVX2_CPUS else set()
    for flag in features.split(","):
        if flag[1:] and flag[0] in "+-":
            (have.add if flag[0] == "+" else have.discard)(flag[1:])
    if {"avx512f", "avx2", "fma"} <= have:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= have else "portable"


def describe() -> str:
    """A few lines naming Numba's target, the chosen variant and its tiles."""
    from .microkernel_source import TAILS, TILES

    name, features = TARGET
    isa = ISAS[ISA]
    tiles = ", ".join(f"{cb}x{rb}" for cb, rb in TILES[ISA])
    shown = ",".join(f for f in features.split(",") if f[1:] in ("avx2", "fma", "avx512f")
                     and f.startswith("+")) or "(the CPU's defaults)"
    return (f"Numba target CPU: {name} (features {shown})\n"
            f"micro-kernel variant: {ISA}: {isa.description}\n"
            f"register tiles (channels x pixels): {tiles}; row-end pixel blocks "
            f"{', '.join(str(t) for t in TAILS)}\n"
            f"kernel module: {__package__}.microkernels_{ISA}")


TARGET = numba_target()
#: the variant chosen for this process
ISA = choose(*TARGET)
