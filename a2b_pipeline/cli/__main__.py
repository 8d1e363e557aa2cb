"""`python -m a2b_pipeline.cli ...` (as torchrun launches it): the same as `a2b ...`."""

from a2b_pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
