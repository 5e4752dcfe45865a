"""`python -m refdecomp.ops`: the registered ops, the Keras classes each reads and its rules."""
from __future__ import annotations

from . import registry


def main() -> None:
    rules = ("liveness", "export")
    print(f"{'op':<18} {'weighted':<8} {'lowering':<9} Keras classes")
    for s in registry.ops():
        print(f"{s.name:<18} {'yes' if s.weighted else '':<8} {s.lowering or '-':<9} "
              f"{', '.join(s.keras) or '-'}")
        missing = [r for r in rules if getattr(s, r) is None]
        print(f"{'':<18} attrs: {s.attrs}; weights: {s.weights}"
              + (f"; no {', '.join(missing)} rule" if missing else ""))


if __name__ == "__main__":
    main()
