"""One router per resource; ``service.api`` gathers them into ``api_router``."""
