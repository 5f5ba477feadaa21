"""The errors a sandbox reports for what stopped a run (not what the user's code raised)."""

from executor.models import ExecutionError


def died_error(oom: bool, memory_limit_mb: int) -> ExecutionError:
    """The kernel process died mid-run (OOM kill, os._exit, a crash) and was restarted."""
    if oom:
        return ExecutionError(
            name="MemoryError",
            value=f"The sandbox ran out of memory (limit {memory_limit_mb} MB) and was "
            "restarted: variables and files in /tmp were lost; /mnt/data was kept.",
        )
    return ExecutionError(
        name="SandboxRestarted",
        value="The Python kernel exited unexpectedly and was restarted: variables and files "
        "in /tmp were lost; /mnt/data was kept.",
    )


def oom_killed_error(memory_limit_mb: int) -> ExecutionError:
    """A one-shot program was OOM-killed (the kernel's state is not affected)."""
    return ExecutionError(
        name="MemoryError",
        value=f"The program ran out of memory (limit {memory_limit_mb} MB) and was killed.",
    )


def timeout_error(timeout: float, state_lost: bool) -> ExecutionError:
    """The run passed its deadline: interrupted, or killed and restarted (`state_lost`)."""
    if state_lost:
        detail = (
            "did not stop when interrupted, so the sandbox was restarted: variables and files "
            "in /tmp were lost; /mnt/data was kept."
        )
    else:
        detail = "was interrupted."
    return ExecutionError(
        name="TimeoutError", value=f"Execution exceeded the {timeout:g} s time limit and {detail}"
    )


def compile_error(stderr: str) -> ExecutionError:
    """The compiler's first error line; its full output is the run's stderr."""
    first = next((line.strip() for line in stderr.splitlines() if "error" in line), None)
    return ExecutionError(name="CompileError", value=first or "compilation failed")


def output_limit_error(limit: int, ending: str) -> ExecutionError:
    """The code printed more than `limit` bytes, and `ending` says what we did about it."""
    return ExecutionError(
        name="OutputLimitExceeded", value=f"The code printed more than {limit} bytes and {ending}"
    )
