"""A text field for a file or folder path that completes from the file system, as a shell does:
`~` expanded, relative paths from a base directory, Tab (or Right at the end) takes the
suggestion, a folder's suggestion ends in "/" so the next Tab goes on inside it."""

from __future__ import annotations

import asyncio
import os

from textual.binding import Binding
from textual.suggester import Suggester
from textual.widgets import Input

MAX_SCAN = 5000  # entries read from one directory per keystroke (a huge folder stays quick)


def path_matches(value: str, base: str, limit: int = 50) -> list[str]:
    """The completions of `value` (as typed: `~` and relative paths kept), sorted, folders with
    a trailing "/"; hidden entries only when the typed name starts with a dot."""
    if not value:
        return []
    if value == "~":
        return ["~/"]
    head, _, prefix = value.rpartition("/")
    typed_dir = head + "/" if value.count("/") else ""
    directory = os.path.expanduser(head if head or not typed_dir else "/")
    if not os.path.isabs(directory):
        directory = os.path.join(base, directory)
    found: list[str] = []
    try:
        with os.scandir(directory) as it:
            for i, entry in enumerate(it):
                if i >= MAX_SCAN:
                    break
                name = entry.name
                if not name.startswith(prefix) or (name.startswith(".") and not prefix.startswith(".")):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                found.append(typed_dir + name + ("/" if is_dir else ""))
    except OSError:
        return []
    found.sort()
    return found[:limit]


def completion(value: str, base: str) -> str | None:
    """What Tab makes of `value`: the one match, else the matches' longest common start when it
    is longer than what was typed, else the first match; None when nothing matches."""
    matches = path_matches(value, base)
    if not matches:
        return None
    if len(matches) == 1:
        return matches[0]
    common = os.path.commonprefix(matches)
    return common if len(common) > len(value) else matches[0]


class PathSuggester(Suggester):
    def __init__(self, base: str):
        super().__init__(use_cache=False, case_sensitive=True)  # the file system changes
        self.base = base

    async def get_suggestion(self, value: str) -> str | None:
        found = await asyncio.to_thread(completion, value, self.base)  # a slow disk never blocks keys
        return found if found and found != value else None


class PathInput(Input):
    """Input with file system completion; Tab takes the suggestion (it never leaves the field)."""

    BINDINGS = [Binding("tab", "complete", "Complete", show=False)]

    def __init__(self, base: str, **kwargs):
        super().__init__(suggester=PathSuggester(base), **kwargs)
        self.base = base

    def action_complete(self) -> None:
        if self._suggestion and self._suggestion.startswith(self.value):
            self.value = self._suggestion
        else:  # typed faster than the suggestion came: complete now
            found = completion(self.value, self.base)
            if found:
                self.value = found
        self.cursor_position = len(self.value)
