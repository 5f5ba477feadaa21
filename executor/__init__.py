"""The execution service: a pool of isolated sandboxes that run model-written code."""
