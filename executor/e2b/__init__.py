"""The E2B backend: sandboxes are E2B cloud microVMs driven by `e2b_code_interpreter` (SDK v2).

    backend.py   E2BBackend: starts sandboxes from a template, with no internet access
    sandbox.py   E2BSandbox: runs, files, deadlines, interrupts, lifetime
    errors.py    the one place that knows the SDK's exceptions (and the raw httpx ones)
    results.py   E2B's results and errors in the executor's models

Python and JavaScript run in the sandbox's stateful Jupyter kernels (`run_code`, the code
interpreter server's NDJSON `/execute` stream); bash, C and C++ run as one-shot commands
(`commands.run`), wrapped in coreutils `timeout` so a runaway process dies inside the VM too.
Everything runs as root, like E2B's kernels, so files the kernel writes under /mnt/data stay
writable by commands and uploads.

How it lines up with the local backend:

- A deadline interrupts and keeps the kernel's state. Our deadline is `asyncio.wait_for`
  (the SDK's own bound is set further out); cutting the call closes its HTTP stream, which
  makes E2B's server interrupt the kernel. If the kernel does not answer within the
  interrupt grace after that, its context is restarted and the run says `state_lost`, as
  the local backend does when it has to kill a kernel.
- Output past the flood cap stops the cell the same way (OutputLimitExceeded).
- Tracebacks come back as a list of lines: E2B joins Jupyter's traceback entries into one
  string, so the local backend's entries cannot be recovered exactly.
- Not aligned: memory, processes and disk are bounded by the E2B template's VM, not by our
  settings, and a deadline cannot stop a cell that ignores interrupts faster than a context
  restart (about a second, which loses the state).

E2B's server releases a context's lock before its interrupt reaches the kernel, and a cell
queued in that window is aborted by the kernel and never answered: a run sent right after a
cut one would hang until its deadline. So after every cut call the next run first waits a
short grace and checks that the kernel answers.

The SDK is imported when the backend starts (it is the optional `e2b` extra); tests inject a
module with the same surface through `sdk`.
"""

from executor.e2b.backend import E2BBackend
from executor.e2b.sandbox import E2BSandbox

__all__ = ["E2BBackend", "E2BSandbox"]
