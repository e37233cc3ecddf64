"""The GPU-kernel suite (issue 5: not built yet). Runs inside sandboxed subprocesses and
never imports the engine."""
