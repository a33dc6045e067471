"""The configuration reference: every key of a study config with its type, default and
documentation, read from the config dataclasses themselves.

A field is documented by the string literal on the line(s) right after it (the attribute-docstring
convention of litgpt and Sphinx), read here with ``ast`` from the class's source and its bases'.
A field whose type is a section (a dataclass) may leave that to its class's docstring. Python
keeps neither of these at run time, hence the source: ``dataclass`` fills ``__doc__`` with the
signature when a class has no docstring.

``crdist config`` prints it; ``crdist config --markdown`` is docs/configuration.md.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import itertools
import re
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from crdist.config import ConfigError

MARKDOWN_COMMAND = "crdist config --markdown > docs/configuration.md"


@dataclass(frozen=True)
class Key:
    """One setting: ``train.lr``."""

    path: str
    type: str  # as a reader writes it: "float", "int | null", "list[str]"
    choices: tuple  # the allowed values of a Literal, else ()
    default: str  # as YAML writes it: "0.003", "null", "[sgd, lpft]"
    doc: str  # "" when the field has none


@dataclass(frozen=True)
class Section:
    """A mapping of keys: ``train``, ``evaluate.knn``; the top level has path ""."""

    path: str
    doc: str
    keys: list[Key]
    sections: list[Section]
    same_as: str = ""  # the path of an earlier section of the same class, whose keys these repeat

    def walk(self) -> typing.Iterator[Section]:
        yield self
        for section in self.sections:
            yield from section.walk()

    def described(self) -> typing.Iterator[Section]:
        """As ``walk``, less the sections that repeat an earlier one's keys (and theirs)."""
        yield self
        for section in self.sections:
            if section.same_as:
                yield section
            else:
                yield from section.described()

    def shown_keys(self) -> list[Key]:
        return [] if self.same_as else self.keys


@functools.cache
def study_reference() -> Section:
    """The reference of StudyConfig: its top-level keys, and a section per component and per method."""
    from crdist.study import StudyConfig, method_sections

    notes = {name: _method_doc(name, cls) for name, cls in method_sections().items()}
    return reference(StudyConfig, section_docs=notes)


def reference(cls: type, path: str = "", doc: str = "", section_docs: dict[str, str] | None = None,
              seen: dict[type, str] | None = None) -> Section:
    """The reference of dataclass ``cls`` as the section at ``path``. ``section_docs`` documents
    sections whose fields have no source to read (those ``make_dataclass`` adds); ``seen`` maps the
    section classes already described to where."""
    seen = {} if seen is None else seen
    first_described_at = seen.setdefault(cls, path) if path else path
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    keys, sections = [], []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        full = f"{path}.{f.name}" if path else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            own = docs.get(f.name) or (section_docs or {}).get(f.name) or class_doc(tp)
            sections.append(reference(tp, full, own, seen=seen))
        else:
            keys.append(Key(full, _type_text(tp), _choices(tp), _default_text(f), docs.get(f.name, "")))
    return Section(path, doc, keys, sections, same_as=first_described_at if first_described_at != path else "")


def field_docs(cls: type) -> dict[str, str]:
    """Field name → its docstring, over ``cls`` and its bases (a subclass's own wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        node = _class_node(klass)
        if node is None:
            continue
        body = node.body
        for statement, following in itertools.pairwise(body):
            if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[statement.target.id] = inspect.cleandoc(following.value.value)
    return docs


def class_doc(cls: type) -> str:
    """The docstring written in ``cls``'s source, "" without one."""
    node = _class_node(cls)
    return (ast.get_docstring(node) or "") if node is not None else ""


def undocumented(section: Section) -> list[str]:
    """Every key and section under ``section`` that has no documentation."""
    missing = []
    for part in section.described():
        if part.path and not part.doc:
            missing.append(part.path)
        missing += [key.path for key in part.shown_keys() if not key.doc]
    return missing


def find(root: Section, path: str) -> Section | Key:
    """The section or key at dotted ``path``; an unknown one is a ConfigError naming close matches."""
    for section in root.walk():
        if section.path == path:
            return section
        for key in section.keys:
            if key.path == path:
                return key
    raise ConfigError(_unknown_message(root, path))


def _unknown_message(root: Section, path: str) -> str:
    sections = [s.path for s in root.walk() if s.path]
    known = sections + [k.path for s in root.walk() for k in s.keys]
    last = path.rsplit(".", 1)[-1]
    same_name = [k for k in known if k.rsplit(".", 1)[-1] == last and k != path]
    close = [*same_name, *difflib.get_close_matches(path, known, n=3, cutoff=0.6)]
    message = f"no config key {path!r}"
    if close:
        message += f" (did you mean {', '.join(dict.fromkeys(close))}?)"
    section = path.rsplit(".", 1)[0]
    if "." in path and section in sections:
        return message + f"; `crdist config {section}` lists that section's keys"
    return message + "; `crdist config` lists every key"


# ---------------------------------------------------------------- text


def text_of(item: Section | Key, width: int = 100) -> str:
    """What ``crdist config KEY`` prints."""
    if isinstance(item, Key):
        lines = [item.path, f"  type:    {item.type}"]
        if item.choices:
            lines.append(f"  allowed: {', '.join(_value_text(c) for c in item.choices)}")
        lines.append(f"  default: {item.default}")
        lines += _wrapped(item.doc or "(undocumented)", width, "  ")
        return "\n".join(lines)
    blocks = []
    for section in item.described():
        lines = [section.path or "top-level keys", *_wrapped(section.doc, width, "  ")]
        if section.same_as:
            lines.append(f"  The keys of {section.same_as} (crdist config {section.same_as}), under {section.path}.")
        for key in section.shown_keys():
            kind = " | ".join(_value_text(c) for c in key.choices) if key.choices else key.type
            lines.append(f"  {key.path}: {kind} = {key.default}")
            lines += _wrapped(key.doc or "(undocumented)", width, "      ")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _wrapped(doc: str, width: int, indent: str) -> list[str]:
    lines = []
    for paragraph in _paragraphs(doc):
        lines += textwrap.wrap(paragraph, width, initial_indent=indent, subsequent_indent=indent,
                               break_on_hyphens=False)
    return lines


def _paragraphs(doc: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc) if p.strip()]


# ---------------------------------------------------------------- markdown


def markdown(root: Section | None = None) -> str:
    """docs/configuration.md: the whole reference as one Markdown page."""
    root = root or study_reference()
    out = [
        "# Configuration",
        "",
        (
            "Every key of a study config, with its type, default and meaning. This page is generated "
            "from the documentation beside each config field in crdist's source by "
            f"`{MARKDOWN_COMMAND}`; on the command line, `crdist config SECTION` and "
            "`crdist config SECTION.KEY` print the same. [Configs](configs.md) says how config files "
            "are put together and overridden."
        ),
    ]
    for section in root.described():
        level = "#" * min(2 + section.path.count("."), 4)
        out += ["", f"{level} `{section.path}`" if section.path else f"{level} Top-level keys"]
        for paragraph in _paragraphs(section.doc):
            out += ["", _md_escape(paragraph)]
        if section.same_as:
            out += ["", f"The keys of [`{section.same_as}`](#{_anchor(section.same_as)}), under `{section.path}`."]
        if section.shown_keys():
            out += ["", "| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
            for key in section.shown_keys():
                description = "<br><br>".join(_md_escape(p) for p in _paragraphs(key.doc))
                out.append(f"| `{key.path}` | {_md_type(key)} | `{key.default}` | {description} |")
    return "\n".join(out) + "\n"


def _md_type(key: Key) -> str:
    """No bar in a table cell: GitHub would end the cell at one even inside backticks, while MkDocs
    would print the backslash that escapes it there."""
    if key.choices:
        return "one of " + ", ".join(f"`{_value_text(c)}`" for c in key.choices)
    return " or ".join(f"`{part}`" for part in key.type.split(" | "))


def _anchor(path: str) -> str:
    """The id MkDocs gives the heading `path` (its toc extension drops the dots)."""
    return re.sub(r"[^\w-]", "", path.lower())


def _md_escape(text: str) -> str:
    """Prose in a table cell: ``|`` would end the cell and ``<run>`` would be read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------- reading the source


@functools.cache
def _class_node(cls: type) -> ast.ClassDef | None:
    """The ``class`` statement of ``cls``; None for classes without source (builtins, and those
    ``make_dataclass`` builds)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return None
    tree = ast.parse(textwrap.dedent(source))
    return next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)


def _method_doc(name: str, cls: type) -> str:
    """A method's section: its config class's docstring, else the first sentence of its module's."""
    own = class_doc(cls)
    if own:
        return own
    from crdist.methods import METHODS

    module = sys.modules.get(METHODS.get(name).__module__)
    paragraphs = _paragraphs(inspect.getdoc(module) or "") if module is not None else []
    first = re.match(r"(.+?[.!?])(?=\s|$)", paragraphs[0]) if paragraphs else None
    summary = first.group(1) if first else ""
    return f"{summary}\n\nRead when train.methods lists {name}." if summary else ""


# ---------------------------------------------------------------- types and values


def _type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is Literal:
        return " | ".join(dict.fromkeys(type(a).__name__ for a in args))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_text(a) for a in args)}]"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _choices(tp: Any) -> tuple:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return tuple(c for a in typing.get_args(tp) for c in _choices(a))
    return ()


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _value_text(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _value_text(f.default_factory())
    return "(required)"


def _value_text(value: Any) -> str:
    """``value`` as it is written in a YAML config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value if value else '""'
    return str(value)
