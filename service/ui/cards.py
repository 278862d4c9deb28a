"""Model cards: a tag's ``README.md`` sidecar, rendered from Markdown and sanitised before a page shows it.

Markdown is rendered by markdown-it-py (CommonMark, tables, strikethrough) with raw HTML off, so
HTML in a card comes out as text; the result then goes through ammonia (``nh3``), an allow-list
sanitiser: only the tags Markdown produces survive, no attribute that runs script or styles
(``on*``, ``style``: the pages' Content-Security-Policy allows neither), links only to
``http``/``https``/``mailto`` (with ``rel="noopener noreferrer nofollow"``), and images only from
the model's own sidecar files (a page never loads anything from another server).
"""

from __future__ import annotations

from collections.abc import Callable

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

__all__ = ["CARD_FILENAME", "MAX_CARD_BYTES", "render_card"]

CARD_FILENAME = "README.md"
MAX_CARD_BYTES = 1 << 20  # a card larger than this is shown as a download link only

_TAGS = {
    "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "img",
    "li", "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "ol": {"start"}}
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)


def render_card(text: str, *, file_url: Callable[[str], str | None]) -> Markup:
    """``text`` (Markdown) as sanitised HTML, safe to insert into a page.

    Args:
        text: the card's Markdown.
        file_url: maps an image's relative ``src`` (a sidecar file name) to the URL the page may
            load it from, or None to drop it; absolute and protocol-relative sources are always dropped.
    """

    def attribute_filter(tag: str, attr: str, value: str) -> str | None:
        if tag == "img" and attr == "src":
            if "//" in value or ":" in value or value.startswith("/"):
                return None  # another server (or a scheme): never loaded by a page
            return file_url(value)
        return value

    html = _MARKDOWN.render(text)
    clean = nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        attribute_filter=attribute_filter,
        strip_comments=True,
    )
    return Markup(clean)
