"""Reading a small YAML file that may be hostile, in bounded time and memory.

:func:`load_file` reads at most ``MAX_BYTES`` (a larger file, a device or a socket is refused
before parsing), decodes strict UTF-8 and parses with :class:`BoundedLoader`, a
``yaml.SafeLoader`` (no object tags) that also refuses, while composing and so before anything
is expanded or recursed over:

- nesting deeper than ``MAX_DEPTH`` collections (before Python's recursion limit);
- more than ``MAX_NODES`` nodes, or aliases that expand to more than ``MAX_EXPANDED_CHARS``
  characters of scalars, counting an alias as the whole node it refers to (a billion-laughs
  bomb composes a few dozen nodes but expands to billions, which every later traversal, schema
  check or ``repr`` would pay for);
- an alias inside the node it refers to (a recursive structure);
- a key that is not a scalar (``? [a, b] : 1``), a key given twice in one mapping;
- a number literal longer than ``MAX_NUMBER_CHARS`` (Python refuses to convert an int of more
  than 4300 digits, and a float cannot hold one of more than 308).

Every failure is one :class:`~lilnetx.errors.ConfigError` line naming the file, the field path
(``params.lr.choice.2``) where there is one, and the line and column; no value from the file is
shown longer than ``MAX_SHOWN`` characters (:func:`show`).
"""

from __future__ import annotations

import os
import stat
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from lilnetx.errors import ConfigError

MAX_BYTES = 1 << 20
"""Largest file read (1 MiB): the shipped spaces are under 2 KB."""
MAX_DEPTH = 64
"""Deepest nesting of collections: a space nests 5 deep (``methods.imp.params.lr.choice``)."""
MAX_NODES = 10_000
"""Most YAML nodes, each alias counted as the nodes it stands for: a space has under 200."""
MAX_EXPANDED_CHARS = 2 * MAX_BYTES
"""Most characters of scalars, aliases expanded (without aliases the file size bounds it)."""
MAX_NUMBER_CHARS = 100
"""Longest number literal: a float overflows past 308 digits, an int past 4300 cannot be read."""
MAX_SHOWN = 100
"""Longest value (or field path) quoted in a message."""

_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_KIND = {ScalarNode: "a scalar", SequenceNode: "a sequence", MappingNode: "a mapping"}


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` on one line, cut to ``limit`` characters (ending in ``...`` when cut)."""
    text = " ".join(text.splitlines()) if "\n" in text or "\r" in text else text
    return text if len(text) <= limit else text[:limit - 3] + "..."


def show(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)``, cut to ``limit`` characters: for quoting a value from a file."""
    return clip(repr(value), limit)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


class LimitError(yaml.error.MarkedYAMLError):
    """A limit of :class:`BoundedLoader` was hit at ``field`` (a dotted path)."""

    def __init__(self, problem: str, mark: Any, field: str):
        super().__init__(problem=problem, problem_mark=mark)
        self.field = field


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        keys = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in keys
            except TypeError:  # unhashable: BoundedLoader refuses such keys while composing
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {show(key)} (given twice)", key_node.start_mark)
            keys.add(key)
        return super().construct_mapping(node, deep)


class BoundedLoader(UniqueKeyLoader):
    """:class:`UniqueKeyLoader` that enforces the limits of this module while composing."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES
    max_expanded_chars = MAX_EXPANDED_CHARS
    max_number_chars = MAX_NUMBER_CHARS

    def __init__(self, stream):
        super().__init__(stream)
        self._field: list[str] = []  # path of the node being composed
        self._open: set[int] = set()  # ids of the collections being composed
        self._weight: dict[int, tuple[int, int]] = {}  # anchored node -> (nodes, chars)
        self._nodes = 0  # nodes composed so far, aliases expanded
        self._chars = 0  # scalar characters composed so far, aliases expanded
        self._aliased = False

    def _fail(self, problem: str, mark: Any) -> None:
        field = ".".join(self._field) or "(top level)"
        raise LimitError(problem, mark, clip(field))

    def _count(self, nodes: int, chars: int, mark: Any) -> None:
        self._nodes += nodes
        self._chars += chars
        what = "aliases expand to" if self._aliased else "the file has"
        note = " (an alias counts as all it stands for)" if self._aliased else ""
        if self._nodes > self.max_nodes:
            self._fail(f"{what} more than {self.max_nodes} YAML nodes{note}; a search space has "
                       "a few hundred", mark)
        if self._chars > self.max_expanded_chars:
            self._fail(f"{what} more than {self.max_expanded_chars} characters of values{note}",
                       mark)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:  # else the composer reports an undefined alias
                if id(node) in self._open:
                    self._fail(f"alias *{clip(event.anchor, 40)} is inside the node it refers "
                               "to (a recursive structure)", event.start_mark)
                self._aliased = True
                self._count(*self._weight.get(id(node), (1, 0)), event.start_mark)
            return super().compose_node(parent, index)
        event = self.peek_event()
        collection = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
        if collection and len(self._open) >= self.max_depth:
            self._fail(f"nesting deeper than {self.max_depth} levels", event.start_mark)
        before = (self._nodes, self._chars)
        node = super().compose_node(parent, index)
        if event.anchor is not None:
            self._weight[id(node)] = (self._nodes - before[0], self._chars - before[1])
        return node

    def compose_scalar_node(self, anchor):
        node = super().compose_scalar_node(anchor)
        if node.tag in _NUMBER_TAGS and len(node.value) > self.max_number_chars:
            self._fail(f"a number of {len(node.value)} characters ({clip(node.value, 20)}) is "
                       f"too long (at most {self.max_number_chars})", node.start_mark)
        self._count(1, len(node.value), node.start_mark)
        return node

    def compose_sequence_node(self, anchor):
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(SequenceNode, None, start.implicit)
        node = SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        self._count(1, 0, start.start_mark)
        self._open.add(id(node))
        while not self.check_event(yaml.SequenceEndEvent):
            self._field.append(str(len(node.value)))
            node.value.append(self.compose_node(node, len(node.value)))
            self._field.pop()
        self._open.discard(id(node))
        node.end_mark = self.get_event().end_mark
        return node

    def compose_mapping_node(self, anchor):
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(MappingNode, None, start.implicit)
        node = MappingNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        self._count(1, 0, start.start_mark)
        self._open.add(id(node))
        while not self.check_event(yaml.MappingEndEvent):
            mark = self.peek_event().start_mark
            key = self.compose_node(node, None)
            if not isinstance(key, ScalarNode):
                self._fail(f"a key must be a scalar (a name or a number), but got "
                           f"{_KIND[type(key)]}", mark)
            self._field.append(clip(key.value, 40))
            node.value.append((key, self.compose_node(node, key)))
            self._field.pop()
        self._open.discard(id(node))
        node.end_mark = self.get_event().end_mark
        return node


def read_bounded(path: str, *, max_bytes: int = MAX_BYTES, what: str = "file") -> bytes:
    """At most ``max_bytes`` of the regular file (or pipe) ``path``; else a ConfigError."""
    try:
        fifo = stat.S_ISFIFO(os.stat(path).st_mode)  # opening one waits for a writer
        # O_NONBLOCK: a device (a terminal, a serial port) is opened to be refused, not waited on
        fd = os.open(path, os.O_RDONLY | (0 if fifo else getattr(os, "O_NONBLOCK", 0)))
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path!r}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"cannot read {what} {path!r}: Is a directory")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            kind = ("a character device" if stat.S_ISCHR(st.st_mode) else
                    "a block device" if stat.S_ISBLK(st.st_mode) else
                    "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file")
            raise ConfigError(f"cannot read {what} {path!r}: not a regular file ({kind})")
        if stat.S_ISREG(st.st_mode) and st.st_size > max_bytes:
            raise ConfigError(f"{path}: the file has {st.st_size} bytes; a {what} may have at "
                              f"most {_size(max_bytes)}")
        os.set_blocking(fd, True)
        data = bytearray()
        while len(data) <= max_bytes:
            chunk = os.read(fd, min(1 << 16, max_bytes + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path!r}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ConfigError(f"{path}: the file has more than {_size(max_bytes)}; a {what} may have "
                          f"at most {_size(max_bytes)}")
    return bytes(data)


def decode(data: bytes, *, source: str) -> str:
    """Strict UTF-8 with universal newlines (as ``open(path, encoding="utf-8")`` reads)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise ConfigError(f"{source}: not UTF-8 at byte {e.start} (line {line}, column "
                          f"{column}): {e.reason} 0x{data[e.start]:02x}; save the file as "
                          "UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def load(text: str, *, source: str, loader: type[BoundedLoader] = BoundedLoader) -> Any:
    """Parse one YAML document under the limits of ``loader``; a ConfigError if it is bad."""
    try:
        return yaml.load(text, Loader=loader)
    except LimitError as e:
        mark = e.problem_mark
        raise ConfigError(f"{source}: {e.field} (line {mark.line + 1}, column {mark.column + 1}): "
                          f"{e.problem}") from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - text.rfind("\n", 0, e.position)
        char = e.character if isinstance(e.character, int) else ord(e.character[:1] or "\0")
        raise ConfigError(f"{source}: invalid YAML at line {line}, column {column}: "
                          f"unacceptable character #x{char:04x}: {e.reason}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: invalid YAML{where}: "
                          f"{clip(str(getattr(e, 'problem', None) or e), 150)}") from None


def load_file(path: str, *, what: str = "file") -> tuple[Any, str]:
    """The document in the YAML file ``path`` and its text, within this module's limits."""
    text = decode(read_bounded(path, what=what), source=path)
    return load(text, source=path), text
