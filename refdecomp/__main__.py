"""`python -m refdecomp` is the `refdecomp` command line."""
from .cli import main

raise SystemExit(main())
