"""Run by the sandbox's IPython kernel at start-up (`--IPKernelApp.exec_files`), not by us.

It executes in the user's namespace, so everything lives inside one function that deletes
itself. Two things:

* `''` goes to the end of sys.path: the kernel starts with -P so that a file in /mnt/data
  cannot shadow the stdlib during start-up, yet the user's own modules stay importable.
* A soft output cap. The host's caps are the real ones (user code can undo this), but without
  it ipykernel buffers whatever a cell prints until its next flush: 200 MB printed in a tight
  loop made the kernel itself run out of memory before the host could interrupt it. Each
  stream forwards at most the host's flood cap (8 x max_output_bytes characters) per cell and
  drops the rest. Past that point a write from the main thread raises OutputLimitExceeded;
  fd-level output (a subprocess) arrives on a helper thread, which instead sends SIGINT to
  the kernel's process group once, as an interrupt_request would. The host sees the full cap
  arrive, lets the cell end, and reports OutputLimitExceeded.
"""


def _codeproxy_startup() -> None:
    import os
    import signal
    import sys
    import threading
    from typing import Any

    import ipykernel.iostream as iostream  # type: ignore[import-not-found, unused-ignore]
    from IPython import get_ipython  # type: ignore[import-not-found, unused-ignore]

    sys.path.append("")

    class OutputLimitExceeded(Exception):
        """The cell printed far more than the output limit."""

    flood_factor = 8
    state: dict[str, Any] = {"limit": None, "counts": {}, "interrupted": False}
    original = iostream.OutStream.write

    def write(self: Any, string: str) -> Any:
        limit = state["limit"]
        if limit is None or not isinstance(string, str):
            return original(self, string)
        counts = state["counts"]
        before = counts.get(self.name, 0)
        counts[self.name] = before + len(string)
        cap = flood_factor * limit
        if before + len(string) <= cap:
            return original(self, string)
        if before < cap:
            original(self, string[: cap - before])
        if threading.current_thread() is threading.main_thread():
            raise OutputLimitExceeded(f"The code printed more than {cap} bytes and was stopped.")
        if not state["interrupted"]:
            state["interrupted"] = True
            # The kernel leads its own process group (setsid), like ipykernel's interrupt.
            os.killpg(os.getpgrp(), signal.SIGINT)
        return len(string)

    def pre_execute(*_: Any) -> None:
        shell = get_ipython()
        parent = shell.kernel.get_parent("shell") if shell is not None else {}
        options = (parent or {}).get("metadata", {}).get("codeproxy", {})
        limit = options.get("max_output_bytes")
        state["limit"] = limit if isinstance(limit, int) and limit > 0 else None
        state["counts"] = {}
        state["interrupted"] = False

    iostream.OutStream.write = write
    shell = get_ipython()
    if shell is not None:
        shell.events.register("pre_execute", pre_execute)


# IPython runs exec_files with __name__ == "__main__"; importing this module does nothing.
if __name__ == "__main__":
    _codeproxy_startup()
del _codeproxy_startup
