"""Readable text from an HTML body, in time linear in its length (see :func:`html_to_text`)."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

# Elements that start and end a paragraph (a blank line around them) or just a line.
_PARAGRAPH_TAGS = frozenset(
    {"blockquote", "dl", "fieldset", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "ol", "p"}
    | {"pre", "table", "ul"}
)
_LINE_TAGS = frozenset(
    {"address", "article", "aside", "caption", "dd", "div", "dt", "figcaption", "footer", "form"}
    | {"header", "li", "main", "nav", "section", "tbody", "tfoot", "thead", "tr"}
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript"})


class _TextExtractor(HTMLParser):
    """Collects text; ``newlines`` counts the line breaks at the end of what was collected so that
    nested blocks (``<div><div>``) give one break, not one per tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.skip = 0
        self.pre = 0
        self.newlines = 2  # the start of the text counts as the start of a paragraph

    def _break(self, count: int) -> None:
        while self.newlines < count:
            self.chunks.append("\n")
            self.newlines += 1

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skip += 1
        elif tag == "body":
            self.skip = 0  # an unclosed <head> ends where the body starts (HTML5 §13.2.6.4.4)
        elif tag == "br":
            self.chunks.append("\n")
            self.newlines += 1
        elif tag in _PARAGRAPH_TAGS:
            self._break(2)
            self.pre += tag == "pre"
        elif tag in _LINE_TAGS:
            self._break(1)
            if tag == "li":
                self.chunks.append("- ")
        elif tag in ("td", "th"):
            self.chunks.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _SKIP_TAGS:
            self.handle_starttag(tag, attrs)
            if tag != "br":
                self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag in _PARAGRAPH_TAGS:
            self._break(2)
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
        elif tag in _LINE_TAGS:
            self._break(1)

    def handle_data(self, data: str) -> None:
        if self.skip or not data:
            return
        if self.pre:
            # Protected from _tidy's whitespace collapsing by stand-ins (stripped from the input).
            self.chunks.append(data.replace("\n", "\x00").replace(" ", "\x01"))
            self.newlines = 0
        elif data.strip():
            self.chunks.append(re.sub(r"\s+", " ", data))
            self.newlines = 0
        else:
            self.chunks.append(" ")


def _tidy(text: str) -> str:
    lines = [re.sub(r"[ \t\f\v]+", " ", line).strip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).replace("\x00", "\n").replace("\x01", " ").strip()


# A complete tag or declaration: no "<" or ">" inside, so a failed match stops at the next "<" and the
# whole pre-pass is one linear scan (attribute values containing "<"/">" lose their tag; mail HTML
# almost never has them).
_COMPLETE_TAG_RE = re.compile(r"</?[A-Za-z][^<>]*>|<[!?][^<>]*>")


def _only_complete_tags(text: str) -> str:
    """Hand ``html.parser`` only what it handles in linear time. CPython's parser rescans from every
    unclosed construct (``<a <a <a …``, ``<!--`` without ``-->``, ``<![CDATA[`` without ``]]>``) to
    the end of the input: quadratic, minutes of CPU for a megabyte. Here a ``<`` that does not start a
    complete tag becomes ``&lt;`` (shown as text, as a browser would), comments, declarations,
    marked sections and processing instructions are removed (none of them shows text)."""
    out: list[str] = []
    pos = 0
    end = len(text)
    comment_open_after = end + 1  # find("-->") failed from here: later "<!--" cannot close either
    while pos < end:
        lt = text.find("<", pos)
        if lt < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:lt])
        if text.startswith("<!--", lt):
            close = -1 if lt >= comment_open_after else text.find("-->", lt + 4)
            if close >= 0:
                pos = close + 3
                continue
            comment_open_after = min(comment_open_after, lt)
        tag = _COMPLETE_TAG_RE.match(text, lt)
        if tag is None:
            out.append("&lt;")
            pos = lt + 1
        elif text[lt + 1] in "!?":
            pos = tag.end()
        else:
            out.append(tag.group())
            pos = tag.end()
    return "".join(out)


def html_to_text(html_text: str) -> str:
    """Readable text from HTML: ``script``/``style``/``head`` dropped, block elements and ``<br>`` give
    line breaks, list items a ``- ``, entities unescaped, runs of blank lines collapsed. Linear in the
    input (see :func:`_only_complete_tags`). Never raises: if the stdlib parser gives up on some
    markup, tags are stripped by a regex instead."""
    cleaned = _only_complete_tags(html_text.replace("\x00", "").replace("\x01", ""))
    parser = _TextExtractor()
    try:
        parser.feed(cleaned)
        parser.close()
        return _tidy("".join(parser.chunks))
    except Exception:
        return _tidy(html.unescape(re.sub(r"<[^<>]*>", " ", cleaned)))
