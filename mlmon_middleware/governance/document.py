"""A governance document (a model card, a compliance report) as plain parts, written out as
Markdown or as one self-contained HTML page.

The builders (:mod:`~mlmon_middleware.governance.card`, :mod:`~mlmon_middleware.governance.report`)
say *what* a document holds: sections of paragraphs, lists, tables and notices, each section with
the source of its numbers. This module says *how* it is written, and escapes every piece of text on
the way out, since most of it comes from people (a model's facts, actors, reasons) or from served
traffic (segment values): in HTML with :func:`html.escape`; in Markdown each punctuation character
that could start markup gets a backslash (CommonMark shows ``\\<script\\>`` as the text
``<script>``), and line breaks inside a list item or table cell become spaces. The HTML page loads
nothing: its style is inline, it has no script, and its Content-Security-Policy forbids any fetch.

>>> doc = Document("Model card: <fraud>", "v1", [Section("Facts", "the registry", [Bullets(["a*b", "<i>"])])])
>>> print(to_markdown(doc))  # doctest: +NORMALIZE_WHITESPACE
# Model card: \\<fraud\\>
<BLANKLINE>
v1
<BLANKLINE>
## Facts
<BLANKLINE>
*Source: the registry*
<BLANKLINE>
- a\\*b
- \\<i\\>
<BLANKLINE>
>>> "<i>" in to_html(doc), "&lt;i&gt;" in to_html(doc)
(False, True)
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Sequence

FORMATS = ("md", "html")
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&])")  # markup anywhere in a line
LINE_START = re.compile(r"^(\d{1,9}(?=[.)](?:\s|$))|)([.)#+=>-])")  # markup at the start of a line (a heading, a list, a quote)


@dataclasses.dataclass(frozen=True)
class Para:
    """A paragraph of text."""

    text: str


@dataclasses.dataclass(frozen=True)
class Bullets:
    """A list; ``empty`` is shown when it has no items."""

    items: Sequence[str]
    empty: str = "none stated"


@dataclasses.dataclass(frozen=True)
class Table:
    """A table; ``empty`` is shown instead when it has no rows."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    empty: str = "none"


@dataclasses.dataclass(frozen=True)
class Notice:
    """Something the reader must not miss: a section unavailable, a broken chain, a violation."""

    text: str


Block = Para | Bullets | Table | Notice


@dataclasses.dataclass(frozen=True)
class Section:
    """A titled part of a document; ``source``: where its numbers come from (shown under the title)."""

    title: str
    source: str
    blocks: Sequence[Block]


@dataclasses.dataclass(frozen=True)
class Document:
    title: str
    subtitle: str
    sections: Sequence[Section]


def md_text(text: object) -> str:
    """Text as Markdown shows it literally: markup characters escaped, one line.

    >>> print(md_text("a|b <script>\\nx"), md_text("1. not a list"), md_text("# no heading"), md_text("0.95"))
    a\\|b \\<script\\> x 1\\. not a list \\# no heading 0.95
    """
    text = MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))
    return LINE_START.sub(r"\1\\\2", text)


def to_markdown(doc: Document) -> str:
    """The document as Markdown (CommonMark with GitHub's tables)."""
    out = [f"# {md_text(doc.title)}", "", md_text(doc.subtitle), ""]
    for section in doc.sections:
        out += [f"## {md_text(section.title)}", "", f"*Source: {md_text(section.source)}*", ""]
        for block in section.blocks:
            if isinstance(block, Para):
                out.append(md_text(block.text))
            elif isinstance(block, Notice):
                out.append(f"> **{md_text(block.text)}**")
            elif isinstance(block, Bullets):
                out += [f"- {md_text(item)}" for item in block.items] or [f"*{md_text(block.empty)}*"]
            elif block.rows:
                out.append("| " + " | ".join(md_text(h) for h in block.header) + " |")
                out.append("|" + "---|" * len(block.header))
                out += ["| " + " | ".join(md_text(cell) for cell in row) + " |" for row in block.rows]
            else:
                out.append(f"*{md_text(block.empty)}*")
            out.append("")
    return "\n".join(out)


STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; margin: 2rem auto;
       max-width: 1100px; padding: 0 1.5rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #d5dae1; padding-bottom: 0.2rem; margin-top: 2rem; }
.subtitle, .source { color: #5b6573; }
.source { font-size: 0.85rem; font-style: italic; margin-top: -0.4rem; }
.notice { background: #fff4e5; border-left: 4px solid #e8890c; padding: 0.4rem 0.8rem; font-weight: 600; }
.empty { color: #5b6573; font-style: italic; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #d5dae1; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
th { background: #f3f5f8; white-space: nowrap; }
"""


def to_html(doc: Document) -> str:
    """The document as one HTML page that loads nothing (inline style, no script)."""
    esc = html.escape
    out = ["<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{esc(doc.title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
           f"<h1>{esc(doc.title)}</h1>", f'<p class="subtitle">{esc(doc.subtitle)}</p>']
    for section in doc.sections:
        out += [f"<section><h2>{esc(section.title)}</h2>", f'<p class="source">Source: {esc(section.source)}</p>']
        for block in section.blocks:
            if isinstance(block, Para):
                out.append(f"<p>{esc(block.text)}</p>")
            elif isinstance(block, Notice):
                out.append(f'<p class="notice">{esc(block.text)}</p>')
            elif isinstance(block, Bullets):
                items = "".join(f"<li>{esc(item)}</li>" for item in block.items)
                out.append(f"<ul>{items}</ul>" if block.items else f'<p class="empty">{esc(block.empty)}</p>')
            elif block.rows:
                head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
                body = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in block.rows)
                thead = f"<thead><tr>{head}</tr></thead>" if any(block.header) else ""  # a key-value table has none
                out.append(f"<table>{thead}<tbody>{body}</tbody></table>")
            else:
                out.append(f'<p class="empty">{esc(block.empty)}</p>')
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def render(doc: Document, fmt: str) -> str:
    """``doc`` as ``"md"`` or ``"html"``; ``ValueError`` for another format."""
    if fmt == "md":
        return to_markdown(doc)
    if fmt == "html":
        return to_html(doc)
    raise ValueError(f"format must be 'md' or 'html', got {fmt!r}")
