"""The Assistants API (v2) on the loop engine: assistants, threads, messages, runs and run
steps, stored per tenant; runs driven in the background with one sandbox per thread.

- `schemas.py`, `objects.py`: requests, and the objects as OpenAI serves them;
- `store.py`: rows of those objects, and the ending of runs no process drives any more;
- `context.py`: what the model reads for a run;
- `driver.py`, `manager.py`: driving runs, owned by the app's lifespan;
- `routes/`: one module per resource. The renderer is `proxy/renderers/assistants.py`.
"""

from proxy.assistants.routes import router

__all__ = ["router"]
