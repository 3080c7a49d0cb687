"""A checkpoint's tensors as a tree by module prefix (names split on "."), each group with its
subtotal of parameters and bytes, each tensor with its shape, dtype and bytes.

Big models stay responsive: the grouping (`group_tensors`) is plain Python that a worker thread
runs; the widget only adds the nodes of a group when it is expanded, and a group with more
than CHUNK members shows them CHUNK at a time behind a "… more" node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

from rich.text import Text
from textual.binding import Binding
from textual.widgets import Tree
from textual.widgets.tree import TreeNode
from torchdeck.checkpoints.formats.base import TensorInfo
from torchdeck.fmt import fmt_bytes, fmt_count, fmt_dims

CHUNK = 200  # nodes added at a time under one group


@dataclass
class Group:
    """A module prefix: its members (groups and tensors, in the file's order) and subtotals."""

    name: str  # the last part ("attn"); "" for the root
    prefix: str  # the full prefix ("layers.0.attn"); "" for the root
    members: dict[str, Union["Group", TensorInfo]] = field(default_factory=dict)
    params: int = 0
    nbytes: int = 0
    tensors: int = 0

    def names(self) -> Iterator[str]:
        """Every tensor's full name under this group, in order."""
        for m in self.members.values():
            if isinstance(m, Group):
                yield from m.names()
            else:
                yield m.name


@dataclass
class More:
    """The "… N more" node of a group shown in chunks: the next member to show."""

    group: Group
    start: int


def group_tensors(tensors: list[TensorInfo]) -> Group:
    """The tree of prefixes. A name that is both a tensor and a prefix of others ("a" and "a.b")
    keeps both: the tensor under the key "a", the group under "a." (shown as "a")."""
    root = Group("", "")
    for t in tensors:
        parts = t.name.split(".")
        node = root
        n = t.numel
        b = t.nbytes or 0
        node.params += n
        node.nbytes += b
        node.tensors += 1
        for i, part in enumerate(parts[:-1]):
            child = node.members.get(part)
            if not isinstance(child, Group):
                key = part if child is None else part + "."
                child = node.members.get(key)
                if not isinstance(child, Group):
                    child = Group(part, ".".join(parts[:i + 1]))
                    node.members[key] = child
            node = child
            node.params += n
            node.nbytes += b
            node.tensors += 1
        key = parts[-1]
        if key in node.members:  # a group of that name, or a duplicate name (kept, never dropped)
            k = 1
            while f"{key}#{k}" in node.members:
                k += 1
            key = f"{key}#{k}"
        node.members[key] = t
    return root


def group_label(g: Group, title: str | None = None) -> Text:
    label = Text(title if title is not None else g.name, style="bold")
    label.append(f"  {fmt_count(g.params)} params, {fmt_bytes(g.nbytes)}", style="dim")
    if g.tensors > 1:
        label.append(f", {fmt_count(g.tensors)} tensors", style="dim")
    return label


def tensor_label(key: str, t: TensorInfo) -> Text:
    label = Text(key)
    label.append(f"  {fmt_dims(t.shape)}  {t.dtype}  {fmt_bytes(t.nbytes)}", style="dim")
    return label


class TensorTree(Tree):
    """The tensor tree. Right expands (or steps into), Left collapses (or steps out)."""

    BINDINGS = [
        Binding("right", "open_node", "Expand", show=False),
        Binding("left", "close_node", "Collapse", show=False),
    ]

    def __init__(self, **kwargs):
        super().__init__("", **kwargs)
        self.show_root = True
        self.auto_expand = True

    def show_tensors(self, root: Group, title: str) -> None:
        """Replace the tree: the root and its first level (one more while a level has one group)."""
        self.clear()
        self.root.set_label(group_label(root, title))
        self.root.data = root
        node = self.root
        self._fill(node)
        node.expand()
        while len(node.children) == 1 and isinstance(node.children[0].data, Group):
            node = node.children[0]
            self._fill(node)
            node.expand()
        self.cursor_line = 0

    def blank(self) -> None:
        """Nothing to show (reading, refused, gone): no stale root label either."""
        self.clear()
        self.root.set_label("")
        self.root.data = None

    def _fill(self, node: TreeNode, start: int = 0) -> None:
        """Add a group's members [start, start + CHUNK) and a "more" node when there are others."""
        g = node.data
        if not isinstance(g, Group):
            return
        if start == 0 and node.children:
            return  # filled already
        items = list(g.members.items())
        for key, m in items[start:start + CHUNK]:
            if isinstance(m, Group):
                node.add(group_label(m), m)
            else:
                node.add_leaf(tensor_label(key, m), m)
        rest = len(items) - start - CHUNK
        if rest > 0:
            node.add_leaf(Text(f"… {fmt_count(rest)} more (Enter shows the next {min(rest, CHUNK)})", style="italic"),
                          More(g, start + CHUNK))

    def on_tree_node_expanded(self, event: Tree.NodeExpanded) -> None:
        if event.node.tree is self:
            self._fill(event.node)

    def on_tree_node_selected(self, event: Tree.NodeSelected) -> None:
        more = event.node.data
        if isinstance(more, More) and event.node.tree is self:
            event.stop()
            parent = event.node.parent
            event.node.remove()
            if parent is not None:
                self._fill(parent, more.start)

    def action_open_node(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if isinstance(node.data, Group):
            if not node.is_expanded:
                self._fill(node)
                node.expand()
            elif node.children:
                self.move_cursor(node.children[0])
        elif isinstance(node.data, More):
            self.action_select_cursor()

    def action_close_node(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if isinstance(node.data, Group) and node.is_expanded and node is not self.root:
            node.collapse()
        elif node.parent is not None:
            self.move_cursor(node.parent)

    def selected_names(self) -> tuple[str, list[str]]:
        """(what the cursor is on, the tensor names under it): a group's subtree, one tensor, or all."""
        node = self.cursor_node
        data = node.data if node is not None else None
        if isinstance(data, TensorInfo):
            return data.name, [data.name]
        if isinstance(data, Group) and node is not self.root:
            return data.prefix, list(data.names())
        root = self.root.data
        return "every tensor", list(root.names()) if isinstance(root, Group) else []
