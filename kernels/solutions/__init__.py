"""The shipped Triton solution of every problem: `<name>.py` defines solution(*inputs).
Each is the seed of the task tasks/kernel-<name>/solution.py (kernels/tasks.py copies it)."""
