"""Routes of the internal API, one module per resource."""
