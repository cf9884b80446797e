"""Pull-through from upstream registries (REGISTRIES_JSON): configuration, an authenticating
HTTP client, token negotiation and caching, and the service that copies what it pulls."""
