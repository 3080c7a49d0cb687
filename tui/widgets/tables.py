"""Helpers for the DataTables every screen lists things in."""

from __future__ import annotations

from textual.widgets import DataTable


def cursor_key(table: DataTable) -> str | None:
    """The row key under a DataTable's cursor; None when the table is empty."""
    if table.row_count == 0:
        return None
    return table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
