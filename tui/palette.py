"""The command palette, safe against keys that arrive together with Ctrl+P.

Over a slow SSH link, Ctrl+P and the next key (PageDown, PageUp) often arrive in one read.
Textual 8.2.8's palette then shows its command list and highlights the first command before
the list has been laid out; OptionList's page move looks the highlight up in a line map that
is only filled once the list has a size, and raises KeyError, which ends the app. The page
action is retried after the next refresh (when the list has its size), so the key still acts.
"""

from __future__ import annotations

import logging

from textual.command import CommandList, CommandPalette

log = logging.getLogger("torchdeck.tui")


class SafeCommandPalette(CommandPalette):
    RETRIES = 20  # refreshes to wait for the list's layout before the key is let go

    def _action_command_list(self, action: str, _tries: int = 0) -> None:
        if not self.is_attached or not self.query(CommandList):
            return  # closed meanwhile (Escape came in the same read): nothing to move
        try:
            super()._action_command_list(action)
        except KeyError:
            # The list has options but no layout yet (see the module's docstring).
            if _tries < self.RETRIES and self.is_attached:
                self.call_after_refresh(self._action_command_list, action, _tries + 1)
            else:
                log.warning("command palette: %s dropped, the list never got a layout", action)
