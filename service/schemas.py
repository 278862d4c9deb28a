"""Response models: what the API returns, as documented in OpenAPI."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = [
    "BasePublic",
    "BundlePublic",
    "ErrorBody",
    "ErrorResponse",
    "FilePublic",
    "HubErrorResponse",
    "LoadedModel",
    "LoadedModels",
    "ModelPublic",
    "ModelsPublic",
    "SidecarPublic",
    "TagPublic",
]


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class FilePublic(BaseModel):
    """A stored sidecar file (``POST /files``): its content sha256 and size."""

    sha256: str
    size: int


class HubErrorResponse(BaseModel):
    """The Hugging Face Hub's error body, on the Hub routes (``X-Error-Code``/``X-Error-Message`` too)."""

    error: str


class TagPublic(BaseModel):
    name: str
    tag: str
    digest: str
    updated_at: float


class BundlePublic(BaseModel):
    id: str
    digest: str
    size: int
    num_params: int
    reconstructed_bytes: int
    stored_numbers: int
    compression_ratio: float
    mode: str
    base: str | None
    created_at: float
    # The bundle's ``x-`` metadata (free-form strings); null for bundles stored before mcnc 0.2.
    metadata: dict[str, str] | None = None
    # The first TAGS_IN_RECORD names:tags (by name, tag); all ``tag_count`` of them, paginated:
    # GET /models?digest=<id>&offset=...
    tags: list[TagPublic] = []
    tag_count: int = 0
    tags_truncated: bool = False


class ModelPublic(BundlePublic):
    loaded: list[str] = []  # tiers holding some of it (any dtype)
    # The sidecar files of the tag ``ref`` names (none for a digest ref: files belong to tags); their
    # bytes: GET /models/{ref}/files/{name}
    files: list[SidecarPublic] = []


class ModelsPublic(BaseModel):
    items: list[TagPublic]
    total: int
    limit: int
    offset: int


class LoadedModel(BaseModel):
    digest: str
    dtype: str
    key: str
    tier: str
    bytes: int
    last_used: float
    tags: list[str]


class LoadedModels(BaseModel):
    items: list[LoadedModel]


class SidecarPublic(BaseModel):
    """A sidecar file attached to a repo revision: its file name, content sha256 and size."""

    name: str
    sha256: str
    size: int


class BasePublic(BaseModel):
    digest: str
    file_sha256: str
    size: int
    num_tensors: int
    num_params: int
    created_at: float
    # ``POST /bases?name=``: the repo name this request registered the base under (null without
    # ``name``), the Hub commit id of that repo's ``main`` and its sidecar files (``file=``).
    name: str | None = None
    commit: str | None = None
    files: list[SidecarPublic] = []
