"""The command palette's provider: every action of the viewer, by name (`:` or ctrl+p)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui.keys import KEYS, KeySpec, keys_of


class ThreadlabCommands(Provider):
    """Offers each enabled binding's action (read-only viewers get no changing ones)."""

    def _available(self) -> Iterator[tuple[KeySpec, str]]:
        app = self.app
        keymap: dict[str, str] = getattr(app, "keymap", {})
        for spec in KEYS:
            if not spec.palette:
                continue
            name = spec.action.split("(")[0]
            if app.check_action(name, ()) is not True:
                continue
            keys = ", ".join(app.get_key_display_for(k) if hasattr(app, "get_key_display_for") else k
                             for k in keys_of(spec, keymap))
            yield spec, keys

    def _run(self, action: str):  # noqa: ANN202 - the palette's callback
        return partial(self.app.run_action, action)

    async def discover(self) -> Hits:
        for spec, keys in self._available():
            yield DiscoveryHit(spec.description, self._run(spec.action), help=f"key: {keys}")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for spec, keys in self._available():
            text = spec.description
            score = max(matcher.match(text), matcher.match(spec.id.replace("_", " ")))
            if score > 0:
                yield Hit(score, matcher.highlight(text), self._run(spec.action), help=f"key: {keys}")
