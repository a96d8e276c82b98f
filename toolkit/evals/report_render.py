"""A report as a list of blocks, rendered to Markdown (images linked) and self-contained HTML (images inlined)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path
    caption: str


@dataclass
class Code:
    """Preformatted lines (a fenced block in Markdown, ``<pre>`` in HTML); ``style`` is an HTML class."""

    text: str
    style: str = ""


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


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block], base: Path) -> str:
    """Markdown with images linked relative to ``base`` (the run folder)."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Table):
            out.append("| " + " | ".join(map(_md_cell, block.header)) + " |")
            out.append("|" + "---|" * len(block.header))
            out.extend("| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows)
        elif isinstance(block, Code):
            out += ["```text", block.text.rstrip("\n"), "```"]
        else:
            out.append(f"![{block.caption}]({block.path.relative_to(base).as_posix()})")
        out.append("")
    return "\n".join(out)


def to_html(blocks: list[Block], title: str) -> str:
    """One HTML file with every PNG embedded as base64 (no other files needed)."""
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif isinstance(block, Code):
            style = f' class="{html.escape(block.style)}"' if block.style else ""
            body.append(f"<pre{style}>{html.escape(block.text.rstrip())}</pre>")
        else:
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
