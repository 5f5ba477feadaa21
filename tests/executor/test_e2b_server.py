"""The E2B backend with the real SDK against a fake of E2B's code-interpreter server on
loopback (tests/executor/e2b_server.py): a server that dies mid-stream, the abort race after
a cut call, per-request server errors, deadlines that keep the kernel's state."""

import asyncio
import importlib
import types
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from executor.e2b import E2BBackend, E2BSandbox
from executor.errors import SandboxUnavailable
from executor.languages import Language
from executor.models import ExecuteRequest
from executor.service import ExecutorService
from tests.executor.e2b_server import FakeE2B
from tests.executor.fakes import make_settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def sdk_for(cloud: FakeE2B) -> types.SimpleNamespace:
    """The real SDK, its sandboxes created in debug mode against the cloud's fake servers."""
    real = importlib.import_module("e2b_code_interpreter")

    async def create(template: str, **options: Any) -> Any:
        server = await cloud.new_server()
        return await real.AsyncSandbox.create(template, proxy=server.url, debug=True, **options)

    names = {name: getattr(real, name) for name in dir(real) if not name.startswith("_")}
    return types.SimpleNamespace(**{**names, "AsyncSandbox": types.SimpleNamespace(create=create)})


@pytest.fixture
async def cloud() -> AsyncIterator[FakeE2B]:
    fake = FakeE2B()
    yield fake
    await fake.aclose()


def e2b_settings(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "sandbox_backend": "e2b",
        "e2b_api_key": SecretStr("e2b-test-key"),
        "interrupt_grace": 1.0,
    }
    return make_settings(**{**values, **overrides})


@pytest.fixture
async def backend(cloud: FakeE2B) -> E2BBackend:
    backend = E2BBackend(e2b_settings(), sdk=sdk_for(cloud))
    await backend.start()
    return backend


async def run(sandbox: E2BSandbox, code: str, timeout: float = 10, **kw: Any) -> Any:
    language = kw.pop("language", Language.PYTHON)
    return await sandbox.run(
        code, language, timeout=timeout, max_output_bytes=kw.pop("max_output_bytes", 4096)
    )


async def test_state_output_results_and_tracebacks(backend: E2BBackend, cloud: FakeE2B) -> None:
    sandbox = await backend.create()
    await run(sandbox, "x = 41")
    out = await run(sandbox, "print(x)\nresult(42)")
    assert out.stdout == "41\n" and out.error is None
    assert [r.data for r in out.results] == [{"text/plain": "42"}]
    failed = await run(sandbox, "1/0")
    assert failed.error is not None and failed.error.name == "ZeroDivisionError"
    # Like the local backend: a list, one line each.
    assert failed.error.traceback == [
        "ZeroDivisionError                         Traceback (most recent call last)",
        "Cell In[1], line 1",
        "----> 1 1/0",
        "ZeroDivisionError: division by zero",
    ]


async def test_a_server_that_dies_mid_run_makes_the_sandbox_unavailable(
    backend: E2BBackend, cloud: FakeE2B
) -> None:
    sandbox = await backend.create()
    with pytest.raises(SandboxUnavailable):
        await run(sandbox, "print('before')\ndie()")
    assert not sandbox.alive
    with pytest.raises(SandboxUnavailable):  # nothing listens any more: ConnectError
        await run(sandbox, "print('again')")


async def test_the_pool_replaces_a_sandbox_whose_server_died(cloud: FakeE2B) -> None:
    settings = e2b_settings(acquire_timeout=30)
    service = ExecutorService(settings, E2BBackend(settings, sdk=sdk_for(cloud)))
    await service.start()
    try:
        session = await service.create_session("tenant")

        async def execute(code: str) -> Any:
            return await service.execute("tenant", ExecuteRequest(session_id=session.id, code=code))

        await execute("x = 1")
        with pytest.raises(SandboxUnavailable):
            await execute("die()")
        again = await execute("print('fresh')\nprint(x)")
        assert again.state_lost and again.stdout == "fresh\n"
        assert again.error is not None and again.error.name == "NameError"
        assert len(cloud.servers) == 2 and cloud.servers[0].dead
    finally:
        await service.aclose()


async def test_a_run_right_after_a_cut_one_does_not_hang(
    backend: E2BBackend, cloud: FakeE2B
) -> None:
    sandbox = await backend.create()
    await run(sandbox, "x = 7")
    kernel = cloud.servers[0].python
    # A client disconnects mid-run and retries at once: the first call is cancelled.
    first = asyncio.create_task(run(sandbox, "sleep(30)", timeout=60))
    await kernel.busy.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    retry = await run(sandbox, "print('retried')\nprint(x)", timeout=5)
    assert not retry.timed_out, retry
    assert retry.stdout == "retried\n7\n" and not retry.state_lost
    assert cloud.servers[0].interrupts >= 1 and cloud.servers[0].restarts == 0


async def test_a_deadline_interrupts_and_keeps_the_state(
    backend: E2BBackend, cloud: FakeE2B
) -> None:
    sandbox = await backend.create()
    await run(sandbox, "x = 3")
    out = await run(sandbox, "print('started')\nsleep(30)", timeout=0.5)
    assert out.timed_out and not out.state_lost
    assert out.stdout == "started\n"
    assert out.error is not None and out.error.name == "TimeoutError"
    assert (await run(sandbox, "print(x)")).stdout == "3\n"
    assert cloud.servers[0].restarts == 0 and sandbox.alive


async def test_code_that_ignores_the_interrupt_is_restarted(
    backend: E2BBackend, cloud: FakeE2B
) -> None:
    sandbox = await backend.create()
    await run(sandbox, "x = 3")
    out = await run(sandbox, "stubborn(30)", timeout=0.5)
    assert out.timed_out and out.state_lost
    assert out.error is not None and "restarted" in out.error.value
    assert cloud.servers[0].restarts == 1
    after = await run(sandbox, "print(x)")
    assert after.error is not None and after.error.name == "NameError"
    assert (await run(sandbox, "print('ok')")).stdout == "ok\n"


async def test_an_error_answered_for_one_request_keeps_the_sandbox(cloud: FakeE2B) -> None:
    cloud.languages = ("python",)  # a template without a JavaScript kernel
    backend = E2BBackend(e2b_settings(), sdk=sdk_for(cloud))
    await backend.start()
    sandbox = await backend.create()
    await run(sandbox, "x = 5")
    out = await run(sandbox, "console.log(1)", language=Language.JAVASCRIPT)
    assert out.error is not None and out.error.name == "SandboxError"
    assert "500" in out.error.value
    assert sandbox.alive
    assert (await run(sandbox, "print(x)")).stdout == "5\n"


async def test_an_output_flood_is_cut_and_the_state_kept(
    backend: E2BBackend, cloud: FakeE2B
) -> None:
    sandbox = await backend.create()
    await run(sandbox, "x = 9")
    out = await run(sandbox, "flood(100000)", timeout=30, max_output_bytes=1000)
    assert out.error is not None and out.error.name == "OutputLimitExceeded"
    assert out.stdout_truncated and len(out.stdout) == 1000
    assert not out.state_lost
    assert (await run(sandbox, "print(x)")).stdout == "9\n"
