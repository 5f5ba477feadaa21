"""The API service: auth, OpenAI-compatible routes and the code-interpreter tool loop."""
