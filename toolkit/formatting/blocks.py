"""A report as a list of blocks, rendered to Markdown (images linked) and self-contained HTML (images inlined)."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_e = html.escape


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (no trailing newline), as every table in toolkit/ and benchmarks/ is written; a cell's ``|``
    is escaped and its newlines become spaces."""
    return "\n".join([_md_row(header), "|" + "---|" * len(header), *map(_md_row, rows)])


@dataclass
class Heading:
    text: str
    level: int = 2

    def markdown(self, base: Path) -> str:
        return f"{'#' * self.level} {self.text}"

    def html(self) -> str:
        return f"<h{self.level}>{_e(self.text)}</h{self.level}>"


@dataclass
class Paragraph:
    text: str

    def markdown(self, base: Path) -> str:
        return self.text

    def html(self) -> str:
        return f"<p>{_e(self.text)}</p>"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def markdown(self, base: Path) -> str:
        return markdown_table(self.header, self.rows)

    def html(self) -> str:
        head = "".join(f"<th>{_e(h)}</th>" for h in self.header)
        rows = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


@dataclass
class Image:
    path: Path
    caption: str

    def markdown(self, base: Path) -> str:
        return f"![{self.caption}]({self.path.relative_to(base).as_posix()})"

    def html(self) -> str:
        data = base64.b64encode(self.path.read_bytes()).decode("ascii")
        return (f'<figure><img alt="{_e(self.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_e(self.caption)}</figcaption></figure>")


@dataclass
class Code:
    """Preformatted lines (a fenced block in Markdown, ``<pre>`` in HTML); ``style`` is an HTML class."""

    text: str
    style: str = ""

    def markdown(self, base: Path) -> str:
        return "```text\n" + self.text.rstrip("\n") + "\n```"

    def html(self) -> str:
        style = f' class="{_e(self.style)}"' if self.style else ""
        return f"<pre{style}>{_e(self.text.rstrip())}</pre>"


Block = Heading | Paragraph | Table | Image | Code

# wide content (JSON without spaces, long code lines, wide tables) wraps or scrolls inside its own block
_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "p,td,th,figcaption{overflow-wrap:anywhere}"
        ".scroll{overflow-x:auto;max-width:100%}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%;height:auto}figure{margin:1em 0}"
        "figcaption{color:#666;font-size:90%}"
        "pre{white-space:pre-wrap;overflow-wrap:anywhere;overflow-x:auto;max-width:100%;background:#f7f7f7;"
        "padding:.6em .8em;border-left:4px solid #bbb}"
        "pre.pass{border-left-color:#2a8a3e}pre.fail{border-left-color:#c0392b}")


def to_markdown(blocks: list[Block], base: Path) -> str:
    """Markdown with images linked relative to ``base`` (the run folder)."""
    return "".join(block.markdown(base) + "\n\n" for block in blocks)[:-1]


def to_html(blocks: list[Block], title: str) -> str:
    """One HTML file with every PNG embedded as base64 (no other files needed)."""
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(block.html() for block in blocks)
            + "\n</body></html>\n")
