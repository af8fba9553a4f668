"""`python -m si_toolkit` runs the `si` command line."""

from si_toolkit.cli import main

if __name__ == "__main__":
    main()
