"""HTML pieces of the atlas (:mod:`zf_pipeline.atlas`): the page frame, images, figures, and tables from markdown.

Every page is self-contained (inline style and script, relative links), so the site opens from disk.
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
a{color:#0550ae;text-decoration:none}a:hover{text-decoration:underline}
nav{margin-bottom:1em}nav a{margin-right:1em}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}
.maps{display:flex;flex-wrap:wrap;gap:6px}
.maps a{display:flex;flex-direction:column;align-items:center;font-size:11px;color:#444}
.maps img,.grid img{image-rendering:pixelated;background:#808080}
.grid{display:grid;grid-template-columns:repeat(3,auto);gap:6px;justify-content:start}
figure{margin:0}
figcaption{font-size:11px;color:#444;max-width:112px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.pair{display:flex;flex-wrap:wrap;gap:2.5em}
.wide img{max-width:100%}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}
"""

# Left / right arrow keys walk through the feature maps of a layer (links carry rel=prev / rel=next).
KEYS_JS = """
document.addEventListener('keydown',function(e){
  var a=document.querySelector(e.key==='ArrowLeft'?'a[rel=prev]':e.key==='ArrowRight'?'a[rel=next]':null);
  if(a)location.href=a.getAttribute('href');});
"""

# "Go to map": jump to a feature map of this layer by its channel number.
GOTO_JS = """
document.getElementById('goto').addEventListener('submit',function(e){
  e.preventDefault();var c=parseInt(this.elements.c.value,10),a=document.getElementById('m'+c);
  if(a)location.href=a.getAttribute('href');else this.elements.c.value='no map '+this.elements.c.value;});
"""


def page(title: str, body: str, nav: Sequence[tuple[str, str]] = (), script: str = "") -> str:
    links = "".join(f'<a href="{href}"{rel}>{html.escape(text)}</a>' for href, text, rel in _nav(nav))
    js = f"<script>{script}</script>" if script else ""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><nav>{links}</nav>\n<h1>{html.escape(title)}</h1>\n{body}\n{js}</body></html>\n"
    )


def _nav(nav: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(href, text) pairs; the texts "previous" / "next" get rel=prev / rel=next for the arrow keys."""
    rel = {"previous": ' rel="prev"', "next": ' rel="next"'}
    return [(href, text, rel.get(text.split(" ")[0], "")) for href, text in nav]


def write_page(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def img(src: str, alt: str, side: int, lazy: bool = False) -> str:
    loading = ' loading="lazy"' if lazy else ""
    return f'<img src="{src}" alt="{html.escape(alt)}" width="{side}" height="{side}"{loading}>'


def figure(src: str, alt: str, caption: str, side: int) -> str:
    caption = html.escape(caption)
    return f'<figure>{img(src, alt, side)}<figcaption title="{caption}">{caption}</figcaption></figure>'


def wide(src: str, title: str) -> str:
    return f'<h2>{html.escape(title)}</h2><div class="wide"><img src="{src}" alt="{html.escape(title)}"></div>'


def copy_png(src: str | Path, dst: Path) -> str:
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"atlas figure {src} does not exist (expected a PNG file)")
    with src.open("rb") as f:
        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            raise ValueError(f"atlas figure {src} is not a PNG file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst.name


_SEPARATOR = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?$")


def table_html(text: str) -> str:
    """A table for the atlas: HTML (starting with ``<``) as it is; markdown pipe tables converted, other
    markdown lines as escaped paragraphs."""
    if text.lstrip().startswith("<"):
        return text
    out, table = [], []
    for line in text.strip().splitlines() + [""]:
        if line.strip().startswith("|"):
            table.append(line.strip())
            continue
        if table:
            out.append(_pipe_table(table))
            table = []
        if line.strip():
            out.append(f"<p>{html.escape(line.strip())}</p>")
    return "".join(out)


def _pipe_table(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]

    head, rows = cells(lines[0]), [cells(line) for line in lines[1:] if not _SEPARATOR.match(line)]
    thead = "".join(f"<th>{c}</th>" for c in head)
    tbody = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{thead}</tr>{tbody}</table>"
