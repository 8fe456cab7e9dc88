"""Reading YAML that may be hostile: bounded in size, depth and aliases, plain values only.

PyYAML's safe loader never executes anything, but it accepts what a scenario never needs
and a careless reader chokes on: aliases that expand exponentially ("billion laughs"),
nesting deep enough to exhaust the stack, tags that build bytes, sets or timestamps,
keys that are lists, and a key given twice (the last one silently wins). A scenario is
a small tree of plain names, numbers, lists and mappings; everything else is refused here,
before the tree is built, each with one line: ``file:line:col: what is wrong``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# A scenario is a few kB; explicit splits and events of thousands of classes stay far below.
MAX_BYTES = 2 * 2**20
# Sections nest at most ~6 deep (tasks.arrival.clients.<id>[].classes[]).
MAX_DEPTH = 32
# Aliases are rare in scenarios; every one of them is bounded, and so is the tree they expand to.
MAX_ALIASES = 100
MAX_NODES = 200_000

_T = "tag:yaml.org,2002:"
PLAIN_TAGS = {_T + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge")}


class YamlRefused(ValueError):
    """One line: where in the text and what is wrong (``str()`` is the line without the file)."""

    def __init__(self, line: int, column: int, message: str):
        self.line, self.column = line, column
        super().__init__(message)

    def where(self, path: str) -> str:
        return f"{path}:{self.line}:{self.column}: {self}"


def read_text(path: Path) -> str:
    """A scenario file's text: refused unread when too large, then as UTF-8 (a BOM allowed)."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise YamlRefused(1, 1, f"{size / 2**20:.1f} MiB is more than a scenario file may hold ({MAX_BYTES // 2**20} MiB)")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlRefused(line, column, f"not UTF-8 text (byte 0x{data[exc.start]:02x}: {exc.reason})") from None


class _Guarded(yaml.SafeLoader):
    """The safe loader, counting depth and aliases while it composes the node tree, and
    refusing explicit tags other than plain ones."""

    def __init__(self, text: str):
        super().__init__(text)
        self.depth, self.aliases = 0, 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise YamlRefused(mark.line + 1, mark.column + 1, f"more than {MAX_ALIASES} aliases (*name): "
                                  "write the values out")
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and self.resolve_tag(tag) not in PLAIN_TAGS:
            shown = "!!" + tag[len(_T):] if tag.startswith(_T) else tag
            raise YamlRefused(mark.line + 1, mark.column + 1, f"tag {shown} is not allowed: a scenario holds plain names, "
                              "numbers, lists and mappings")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise YamlRefused(mark.line + 1, mark.column + 1, f"nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    @staticmethod
    def resolve_tag(tag: str) -> str:
        return _T + tag[2:] if tag.startswith("!!") else tag


def _check_tree(node: yaml.Node, loader: _Guarded) -> None:
    """Walk the node graph once per node (aliases share nodes): no cycle, a bounded
    expanded size, scalar keys given once, plain values (an implicit timestamp stays a string)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def walk(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_nodes:
            raise YamlRefused(n.start_mark.line + 1, n.start_mark.column + 1, "an alias refers to the node that holds it")
        open_nodes.add(id(n))
        size = 1
        if isinstance(n, yaml.ScalarNode) and n.tag not in PLAIN_TAGS:
            n.tag = _T + "str"  # 2024-01-01, a YAML 1.1 timestamp, is a name here
        elif isinstance(n, yaml.SequenceNode):
            size += sum(walk(item) for item in n.value)
        elif isinstance(n, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key, value in n.value:
                if not isinstance(key, yaml.ScalarNode):
                    raise YamlRefused(key.start_mark.line + 1, key.start_mark.column + 1,
                                      "a key must be a plain name or number, not a list or mapping")
                if key.tag != _T + "merge":
                    name = loader.construct_object(key)
                    if name in seen:
                        raise YamlRefused(key.start_mark.line + 1, key.start_mark.column + 1,
                                          f"key {key.value!r} is given twice (first on line {seen[name]})")
                    seen[name] = key.start_mark.line + 1
                size += 1 + walk(value)
        open_nodes.discard(id(n))
        if size > MAX_NODES:
            raise YamlRefused(n.start_mark.line + 1, n.start_mark.column + 1,
                              f"expands to more than {MAX_NODES:,} values (aliases inside aliases?)")
        sizes[id(n)] = size
        return size

    walk(node)


def compose(text: str) -> tuple[yaml.Node | None, object]:
    """The checked node tree of ``text`` (None: an empty document) and the plain Python
    value it stands for. Raises :class:`YamlRefused` (and ``yaml.YAMLError`` for text that
    is not YAML)."""
    loader = _Guarded(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_tree(node, loader)
        return node, loader.construct_document(node)
    finally:
        loader.dispose()
