"""``python -m rlprune`` entry point."""

from rlprune.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
