"""One module per kernel problem, each defining PROBLEM (see kernels/problem.py)."""
