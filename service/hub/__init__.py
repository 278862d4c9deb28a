"""The Hub-compatible side of the server, used by ``service/routers/hub.py`` and the upload routes.

::

    revisions.py  repo@revision -> Revision (tag, main rule, 40-hex commit ids, digests, :float32)
    sidecars.py   POST /files and file= on pushes: names, limits, git blob ids
"""
