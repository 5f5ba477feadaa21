"""A run whose API process dies mid-run ends `failed`, never stuck `in_progress`: the API
service runs as a real process, killed while the run's code runs, then started again."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.assistants import SDK_WARNINGS, run_status, wait_for
from tests.conftest import sdk_client
from tests.e2e.test_two_services import TOKEN, executor_url, free_port
from tests.proxy.conftest import KEY_A
from tests.servers import wait_until_up
from tests.upstream import ScriptedUpstream, code_call, completion

pytestmark = SDK_WARNINGS
__all__ = ["executor_url"]  # the fixture: a real execution service, which outlives the API


@contextmanager
def api_process(env: dict[str, str], log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`codeproxy proxy` as a process; stopped (if still alive) on exit."""
    port = free_port()
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CODEPROXY_")},
        "CODEPROXY_HOST": "127.0.0.1",
        "CODEPROXY_PORT": str(port),
        "CODEPROXY_LOG_LEVEL": "warning",
        **env,
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "codeproxy.cli", "proxy"],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url, log)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def test_a_run_interrupted_by_a_restart_ends_failed(
    tmp_path: Path, executor_url: str, upstream: ScriptedUpstream
) -> None:
    env = {
        "CODEPROXY_EXECUTOR_URL": executor_url,
        "CODEPROXY_INTERNAL_TOKEN": TOKEN,
        "CODEPROXY_API_KEYS": KEY_A,
        "CODEPROXY_UPSTREAM_BASE_URL": upstream.url + "/v1",
        "CODEPROXY_DATA_DIR": str(tmp_path / "proxy"),
        "CODEPROXY_RUN_HEARTBEAT_INTERVAL": "0.3",
    }
    log = tmp_path / "proxy.log"
    upstream.push(completion(tool_calls=[code_call("import time\ntime.sleep(20)\nprint('slept')")]))
    with api_process(env, log) as (url, proc):
        client = sdk_client(url, KEY_A)
        assistant = client.beta.assistants.create(
            model="gpt-test", tools=[{"type": "code_interpreter"}]
        )
        run = client.beta.threads.create_and_run(
            assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "Sleep."}]}
        )
        steps = lambda: client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id).data  # noqa: E731
        wait_for(steps, lambda found: bool(found and found[0].step_details.tool_calls))
        assert (
            client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id).status
            == "in_progress"
        )
        proc.send_signal(signal.SIGKILL)  # no shutdown: nothing gets to say the run ended
        proc.wait(30)

    with api_process(env, log) as (url, _):
        client = sdk_client(url, KEY_A)
        failed = wait_for(
            run_status(client, run.thread_id, run.id), lambda r: r.status != "in_progress"
        )
        assert failed.status == "failed" and failed.failed_at is not None
        assert failed.last_error is not None and failed.last_error.code == "server_error"
        assert "interrupted" in failed.last_error.message
        [step] = client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id).data
        assert step.status == "failed" and step.last_error is not None
        # Nothing was lost, and the thread takes a new run.
        assert client.beta.assistants.retrieve(assistant.id).id == assistant.id
        assert (
            client.beta.threads.messages.list(run.thread_id).data[0].content[0].text.value
            == "Sleep."
        )
        upstream.push(completion("Awake again."))
        again = client.beta.threads.runs.create_and_poll(
            thread_id=run.thread_id, assistant_id=assistant.id, poll_interval_ms=20
        )
        assert again.status == "completed"
