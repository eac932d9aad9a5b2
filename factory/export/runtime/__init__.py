"""Files shipped verbatim into exports (standard library + duckdb; mcp for the server). Not imported by the factory."""
