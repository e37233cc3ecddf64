"""The Textual supervision app (issue 4: not built yet). It will talk to the engine only
through state.db: the store's read API and models, plus Command rows."""
