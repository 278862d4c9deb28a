"""Web pages for people (docs/service.md "Web pages"): the models, a model's card, tags, files,
config and tested snippets, the bases; server-rendered (Jinja2), strict CSP, nothing from outside.

::

    routes.py       the pages and their static files (``router``)
    queries.py      read-only SQL the pages need (a page of models, a name's tags, a base's deltas)
    bundle_info.py  a bundle's configuration, from its header alone
    cards.py        model cards: Markdown rendered, then sanitised by nh3
    snippets.py     the copy-paste lines of a model page
    present.py      number formats and the transfer chart's geometry
    security.py     CSP headers, the token cookie, the form's CSRF check
"""

from service.ui.routes import router

__all__ = ["router"]
