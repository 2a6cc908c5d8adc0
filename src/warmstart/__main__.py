"""`python -m warmstart` (what `torchrun -m warmstart` runs)."""

from warmstart.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
