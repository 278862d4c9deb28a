"""The Hub listing calls (``list_models``, ``list_repo_refs``, ``list_repo_commits``) made by one
huggingface_hub version (a subprocess, its own venv); prints one JSON line of what it parsed.

Usage: python replay_listing.py ENDPOINT SEARCH REPO_ID
"""

import json
import sys

from huggingface_hub import HfApi

endpoint, search, repo = sys.argv[1:4]
api = HfApi(endpoint=endpoint, token=False)
models = list(api.list_models(search=search))  # no limit: paginate() follows every Link
first = models[0]
refs = api.list_repo_refs(repo)
commits = api.list_repo_commits(repo)
print(json.dumps({
    "ids": [m.id for m in models],
    "shas": [m.sha for m in models],
    "first": {"downloads": first.downloads, "likes": first.likes, "private": first.private, "tags": first.tags,
              "library_name": first.library_name, "last_modified": first.last_modified.isoformat()},
    "branches": [(r.name, r.ref, r.target_commit) for r in refs.branches],
    "tags": [(r.name, r.ref, r.target_commit) for r in refs.tags],
    "commits": [(c.commit_id, c.title, c.created_at.isoformat()) for c in commits],
}))  # fmt: skip
