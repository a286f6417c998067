"""agentcast adapters: the anyio reference server (and later ASGI, Redis)."""
