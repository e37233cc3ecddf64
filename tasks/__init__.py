"""Built-in research tasks: each subfolder with a task.toml is one."""
