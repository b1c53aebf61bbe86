#!/usr/bin/env python3
"""Run the mhfgen command line from a checkout: python cli.py <command> ..."""

from mhfgen.cli import main

if __name__ == "__main__":
    main()
