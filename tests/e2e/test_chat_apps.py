"""An unchanged chat app: only `model` and the visible `messages`, no tools, markdown shown."""

import re
import time
from typing import Any

import httpx

from proxy.auth import static_tenant
from proxy.jsonutil import loads
from proxy.links import signature
from proxy.transcript import LinkRewriter
from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A
from tests.upstream import code_call, completion

PNG_CODE = (
    "import matplotlib.pyplot as plt\n"
    "plt.plot([1, 2, 3], [2, 4, 8])\n"
    "plt.savefig('/mnt/data/growth.png')\n"
    "plt.show()\n"
)
LINK = re.compile(r"\((http://[^)\s]+/download/[^)\s]+)\)")


def ask(
    stack: Stack, messages: list[dict[str, Any]], model: str = "gpt-test+code", **kw: Any
) -> Any:
    return stack.client().chat.completions.create(model=model, messages=messages, **kw)


def test_policy_always_turns_the_interpreter_on(make_stack: Any) -> None:
    stack = make_stack(interpreter="always")
    stack.upstream.push(completion(tool_calls=[code_call("print(7 * 6)")]), completion("42."))
    reply = ask(stack, [{"role": "user", "content": "7*6?"}], model="gpt-test")
    sent = stack.upstream.requests[0]
    assert sent["model"] == "gpt-test"
    assert [t["function"]["name"] for t in sent["tools"]] == ["code_interpreter"]
    content = reply.choices[0].message.content
    assert "```python\nprint(7 * 6)\n```" in content and "```text\n42\n```" in content
    assert content.endswith("42.")


def test_policy_by_model_pattern(make_stack: Any) -> None:
    stack = make_stack(interpreter="models", interpreter_models=["gpt-t*"])
    stack.upstream.push(completion("on"), completion("off"))
    ask(stack, [{"role": "user", "content": "hi"}], model="gpt-test")
    ask(stack, [{"role": "user", "content": "hi"}], model="other-model")
    assert "tools" in stack.upstream.requests[0]
    assert "tools" not in stack.upstream.requests[1]
    assert stack.upstream.requests[1]["messages"] == [{"role": "user", "content": "hi"}]


def test_virtual_model_names(stack: Stack) -> None:
    ids = [m.id for m in stack.client().models.list()]
    assert ids == ["gpt-test", "gpt-test+code"]
    stack.upstream.push(completion("with code"), completion("without"), completion("none"))
    ask(stack, [{"role": "user", "content": "hi"}])
    ask(stack, [{"role": "user", "content": "hi"}], model="gpt-test")
    ask(stack, [{"role": "user", "content": "hi"}], tool_choice="none")
    with_code, plain, declined = stack.upstream.requests
    assert with_code["model"] == "gpt-test" and "tools" in with_code
    assert plain["model"] == "gpt-test" and "tools" not in plain
    assert declined["model"] == "gpt-test" and "tools" not in declined


def test_state_and_hidden_steps_carry_across_turns(stack: Stack) -> None:
    stack.upstream.push(
        completion("Setting it.", tool_calls=[code_call("secret = 6 * 7")]),
        completion("I stored the number."),
    )
    turn1 = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Remember 6*7 in a variable."},
    ]
    first = ask(stack, turn1)
    shown = first.choices[0].message.content
    assert "```python\nsecret = 6 * 7\n```" in shown

    stack.upstream.push(
        completion(tool_calls=[code_call("print(secret)")]), completion("It is 42.")
    )
    turn2 = [
        *turn1,
        {"role": "assistant", "content": shown},
        {"role": "user", "content": "What is in it?"},
    ]
    second = ask(stack, turn2)
    assert second.choices[0].message.content.endswith("It is 42.")
    assert "[stdout]\n42" in stack.upstream.requests[3]["messages"][-1]["content"]

    history = stack.upstream.requests[2]["messages"]
    roles = [m["role"] for m in history]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert history[2]["tool_calls"][0]["function"]["name"] == "code_interpreter"
    assert "secret = 6 * 7" in history[2]["tool_calls"][0]["function"]["arguments"]
    assert history[3]["tool_call_id"] == history[2]["tool_calls"][0]["id"]
    # The model sees its own words, not the transcript the app displayed.
    assert history[4] == {"role": "assistant", "content": "I stored the number."}
    ids = [
        first.model_extra["code_interpreter"]["container_id"],
        second.model_extra["code_interpreter"]["container_id"],
    ]
    assert ids[0] == ids[1]


def test_streamed_turns_carry_state_too(stack: Stack) -> None:
    stack.upstream.push(completion(tool_calls=[code_call("n = 5")]), completion("Done."))
    turn1 = [{"role": "user", "content": "Set n."}]
    with stack.client().chat.completions.stream(model="gpt-test+code", messages=turn1) as s:
        shown = s.get_final_completion().choices[0].message.content
    stack.upstream.push(completion(tool_calls=[code_call("print(n + 1)")]), completion("6"))
    turn2 = [*turn1, {"role": "assistant", "content": shown}, {"role": "user", "content": "n+1?"}]
    with stack.client().chat.completions.stream(model="gpt-test+code", messages=turn2) as s:
        s.get_final_completion()
    assert "[stdout]\n6" in stack.upstream.requests[3]["messages"][-1]["content"]


def test_edited_history_gets_a_fresh_session(stack: Stack) -> None:
    stack.upstream.push(completion(tool_calls=[code_call("v = 1")]), completion("Set."))
    turn1 = [{"role": "user", "content": "Set v."}]
    first = ask(stack, turn1)
    stack.upstream.push(completion(tool_calls=[code_call("print(v)")]), completion("?"))
    edited = [
        {"role": "user", "content": "Set v, please."},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And now?"},
    ]
    second = ask(stack, edited)
    assert "NameError" in stack.upstream.requests[3]["messages"][-1]["content"]
    assert [m["role"] for m in stack.upstream.requests[2]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
    ]
    assert (
        second.model_extra["code_interpreter"]["container_id"]
        != first.model_extra["code_interpreter"]["container_id"]
    )


def test_expired_session_is_recreated_and_reported(make_stack: Any) -> None:
    stack = make_stack(executor={"session_idle_timeout": 1, "reaper_interval": 0.2})
    code = "kept = 1\nopen('/mnt/data/notes.txt', 'w').write('saved before')"
    stack.upstream.push(completion(tool_calls=[code_call(code)]), completion("Saved."))
    turn1 = [{"role": "user", "content": "Save notes."}]
    first = ask(stack, turn1)
    time.sleep(2)  # the idle session expires and the reaper removes it
    stack.upstream.push(
        completion(tool_calls=[code_call("print(open('/mnt/data/notes.txt').read())\nkept")]),
        completion("The notes survived; the variable did not."),
    )
    turn2 = [
        *turn1,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Still there?"},
    ]
    second = ask(stack, turn2)
    assert "has expired" in stack.upstream.requests[2]["messages"][0]["content"]
    result = stack.upstream.requests[3]["messages"][-1]["content"]
    assert "saved before" in result and "NameError" in result
    assert (
        second.model_extra["code_interpreter"]["container_id"]
        != first.model_extra["code_interpreter"]["container_id"]
    )


def test_transcript_modes(make_stack: Any) -> None:
    stack = make_stack(transcript="files")
    for _ in range(3):
        stack.upstream.push(completion(tool_calls=[code_call(PNG_CODE)]), completion("Chart."))
    files_only = ask(stack, [{"role": "user", "content": "chart"}]).choices[0].message.content
    assert "```" not in files_only and files_only.count("![") == 2
    none = stack.client(default_headers={"codeproxy-transcript": "none"})
    plain = none.chat.completions.create(
        model="gpt-test+code", messages=[{"role": "user", "content": "chart"}]
    )
    assert plain.choices[0].message.content == "Chart."
    markdown = stack.client().chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "chart"}],
        tools=[{"type": "code_interpreter", "transcript": "markdown"}],
    )
    assert "```python\nimport matplotlib" in markdown.choices[0].message.content


def test_image_links_work_without_a_key_until_expired_or_deleted(stack: Stack) -> None:
    stack.upstream.push(completion(tool_calls=[code_call(PNG_CODE)]), completion("Here."))
    reply = ask(stack, [{"role": "user", "content": "plot"}])
    content = reply.choices[0].message.content
    urls = LINK.findall(content)
    assert len(urls) == 2  # the displayed figure and the saved file
    for url in urls:
        got = httpx.get(url)
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == "image/png"
        assert got.headers["content-disposition"].startswith("inline")
        assert got.content.startswith(b"\x89PNG\r\n\x1a\n")

    url = urls[0]
    # Change the signature's first character to another one, whatever it was.
    tampered = re.sub(
        r"signature=(.)", lambda m: "signature=" + ("B" if m.group(1) == "A" else "A"), url
    )
    assert tampered != url and httpx.get(tampered).status_code == 404
    other_file = url.replace(
        reply.model_extra["code_interpreter"]["executions"][0]["images"][0]["file_id"],
        "file-doesnotexist000000000",
    )
    assert httpx.get(other_file).status_code == 404

    file_id = url.split("/files/")[1].split("/")[0]
    past = int(time.time()) - 10
    key = stack.settings.secret_key.get_secret_value()  # type: ignore[union-attr]
    tenant = static_tenant(KEY_A)
    expired = re.sub(
        r"expires=\d+&signature=[^&]+",
        f"expires={past}&signature={signature(key, file_id=file_id, tenant=tenant, expires=past)}",
        url,
    )
    response = httpx.get(expired)
    assert response.status_code == 403 and response.json()["error"]["code"] == "link_expired"
    moved = re.sub(
        r"expires=\d+&signature=[^&]+",
        f"expires={past}&signature="
        f"{signature(key, file_id=file_id, tenant='someone-else', expires=past)}",
        url,
    )
    assert httpx.get(moved).status_code == 404

    stack.client().files.delete(file_id)
    assert httpx.get(url).status_code == 404


def test_sandbox_links_are_rewritten(stack: Stack) -> None:
    code = "open('/mnt/data/report.csv', 'w').write('a,b\\n1,2\\n')"
    answer = "Download [the report](sandbox:/mnt/data/report.csv) now."
    stack.upstream.push(completion(tool_calls=[code_call(code)]), completion(answer))
    content = (
        ask(
            stack,
            [{"role": "user", "content": "report"}],
            extra_headers={"codeproxy-transcript": "none"},
        )
        .choices[0]
        .message.content
    )
    assert "sandbox:" not in content
    [url] = LINK.findall(content)
    assert content.startswith("Download [the report](") and content.endswith(") now.")
    got = httpx.get(url)
    assert got.content == b"a,b\n1,2\n"
    assert got.headers["content-disposition"].startswith("attachment")


def test_sandbox_links_split_across_stream_chunks(stack: Stack) -> None:
    code = "open('/mnt/data/out.txt', 'w').write('streamed file')"
    # The scripted upstream streams content in three pieces; the link straddles them.
    answer = "File: sandbox:/mnt/data/out.txt and also [again](sandbox:/mnt/data/out.txt)"
    stack.upstream.push(completion(tool_calls=[code_call(code)]), completion(answer))
    with stack.client().chat.completions.stream(
        model="gpt-test+code",
        messages=[{"role": "user", "content": "go"}],
        extra_headers={"codeproxy-transcript": "none"},
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
    text = "".join(deltas)
    assert "sandbox:" not in text and len(deltas) > 1
    urls = re.findall(r"http://\S+?/download/out\.txt\?expires=\d+&signature=[\w-]+", text)
    assert len(urls) == 2
    assert httpx.get(urls[0]).content == b"streamed file"


async def test_link_rewriter_char_by_char() -> None:
    async def resolve(path: str) -> str | None:
        return f"<{path}>" if path.endswith(".png") else None

    text = (
        "a sandbox:/mnt/data/x.png b (sandbox:/mnt/data/sub/y%20z.png) "
        "sandbox:/mnt/data/missing.txt sandbox: sandbox:/etc/passwd end "
        "sandbox:/mnt/data/../../etc/a.png sandbox:/mnt/data/t.png"
    )
    rewriter = LinkRewriter(resolve)
    out = "".join([await rewriter.feed(c) for c in text]) + await rewriter.flush()
    assert out == (
        "a </mnt/data/x.png> b (</mnt/data/sub/y z.png>) "
        "sandbox:/mnt/data/missing.txt sandbox: sandbox:/etc/passwd end "
        "sandbox:/mnt/data/../../etc/a.png </mnt/data/t.png>"
    )
    assert await LinkRewriter(resolve).rewrite(text) == out


def test_streamed_transcript_shows_the_code_before_its_output(stack: Stack) -> None:
    code = "import time\ntime.sleep(1)\nprint('slept')"
    stack.upstream.push(completion(tool_calls=[code_call(code)]), completion("Done."))
    body = {
        "model": "gpt-test+code",
        "messages": [{"role": "user", "content": "nap"}],
        "stream": True,
    }
    # What arrives, in order: content pieces, and the heartbeats sent while code runs.
    seen: list[str] = []
    with httpx.stream(
        "POST",
        f"{stack.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {KEY_A}"},
        timeout=60,
    ) as response:
        for line in response.iter_lines():
            if line.startswith(": keepalive"):
                seen.append("<keepalive>")
            elif line.startswith("data: {"):
                for choice in loads(line[6:])["choices"]:
                    seen.append(choice["delta"].get("content") or "")
    text = "".join(s for s in seen if s != "<keepalive>")
    code_at = next(i for i, s in enumerate(seen) if "time.sleep(1)" in s)
    output_at = next(i for i, s in enumerate(seen) if "```text\nslept" in s)
    # The code showed while it ran: heartbeats came between it and its output.
    assert "<keepalive>" in seen[code_at:output_at]
    assert text.index("time.sleep(1)") < text.index("slept") < text.index("Done.")
