"""Modal screens: a confirmation (focus starts on Cancel) and the key help."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Static

from tui.keys import KEYS, keys_of


class MainScreen(Screen[None], inherit_bindings=False):
    """The one screen. Textual's Screen binds tab to focus-next; this one leaves tab to the
    app's remappable `switch_pane` binding."""

    BINDINGS = [Binding("ctrl+c,super+c", "screen.copy_text", "Copy selected text", show=False)]


class ConfirmScreen(ModalScreen[bool]):
    """Asks before an action; dismisses True only when the confirm button is pressed."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 64; max-width: 100%; height: auto; border: thick $warning; background: $surface; padding: 1 2;
    }
    ConfirmScreen #confirm-title { text-style: bold; margin-bottom: 1; }
    ConfirmScreen Horizontal { height: auto; margin-top: 1; align-horizontal: right; }
    ConfirmScreen Button { margin-left: 2; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", show=False),
        Binding("left,h", "app.focus_previous", "Previous button", show=False),
        Binding("right,l", "app.focus_next", "Next button", show=False),
    ]

    def __init__(self, title: str, message: str, confirm: str, *, destructive: bool = True,
                 focus_confirm: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.message = message
        self.confirm_label = confirm
        self.destructive = destructive
        self.focus_confirm = focus_confirm

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.title_text), id="confirm-title")
            yield Static(Text(self.message), id="confirm-message")
            with Horizontal():
                yield Button("Cancel", id="cancel")
                yield Button(self.confirm_label, id="confirm", variant="error" if self.destructive else "primary")

    def on_mount(self) -> None:
        self.query_one("#confirm" if self.focus_confirm else "#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "confirm")

    def action_cancel(self) -> None:
        self.dismiss(False)


class HelpScreen(ModalScreen[None]):
    """Every binding with its current keys (after the keymap)."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        width: 90; max-width: 100%; height: 90%; border: thick $primary; background: $surface; padding: 0 1;
    }
    HelpScreen #help-title { text-style: bold; height: auto; }
    """
    BINDINGS = [
        Binding("escape,q,question_mark", "close", "Close", show=False),
        Binding("j", "scroll('down')", show=False),
        Binding("k", "scroll('up')", show=False),
    ]

    def __init__(self, keymap: dict[str, str], read_only: bool) -> None:
        super().__init__()
        self.keymap = keymap
        self.read_only = read_only

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False, expand=True)
        table.add_column("keys", no_wrap=True)
        table.add_column("does", ratio=1)
        table.add_column("id", style="dim", no_wrap=True)
        for spec in KEYS:
            if spec.writes and self.read_only:
                continue
            shown = ", ".join(self.app.get_key_display(Binding(k, spec.action)) for k in keys_of(spec, self.keymap))
            table.add_row(shown, spec.description, spec.id)
        with Vertical():
            yield Static(Text.assemble(
                ("threadlab keys", "bold"),
                ("  (esc closes; remap them in a keymap file: [keys] id = \"key,key\")", "dim"),
            ), id="help-title")
            with VerticalScroll(id="help-body"):
                yield Static(table)

    def on_mount(self) -> None:
        self.query_one("#help-body").focus()

    def action_scroll(self, direction: str) -> None:
        body = self.query_one("#help-body", VerticalScroll)
        (body.scroll_down if direction == "down" else body.scroll_up)()

    def action_close(self) -> None:
        self.dismiss(None)
