"""`python -m mhfgen ...`: the `mhfgen` command line."""

if __name__ == "__main__":
    from .cli import main

    main()
