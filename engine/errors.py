"""One exception hierarchy; the CLI prints each as one line plus a hint."""


class ThreadlabError(Exception):
    """Base of every error threadlab raises on purpose.

    `hint` says what the user can do about it; the CLI prints it under the message.
    """

    hint: str = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class TaskError(ThreadlabError):
    """A task folder or its task.toml is invalid."""


class PlaybookError(TaskError):
    """A task's playbook.toml is invalid."""


class EditError(ThreadlabError):
    """A SEARCH/REPLACE edit could not be applied."""


class WorkspaceError(ThreadlabError):
    """A git operation on a task repository failed."""


class MergeConflict(WorkspaceError):
    """A three-way merge of two nodes conflicted."""


class StoreError(ThreadlabError):
    """state.db cannot be used."""


class SchemaTooNew(StoreError):
    """state.db was written by a newer threadlab."""


class EngineLocked(StoreError):
    """Another engine owns this database."""


class NotFound(ThreadlabError):
    """A thread, node or run named by the user does not exist."""


class ExecutorError(ThreadlabError):
    """A run could not be started."""
