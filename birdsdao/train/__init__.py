"""Reproducible training recipes, ``python -m birdsdao.train <command>``: command-line tooling the server never
imports (see README.md)."""
