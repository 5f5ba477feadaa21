"""OpenAI-compatible routes, one module per resource."""
