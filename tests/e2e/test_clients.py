"""Clients that go to the Responses API by themselves, against codeproxy over the scripted
upstream, offline: the OpenAI Agents SDK (its default Responses model and CodeInterpreterTool)
and LangChain's ChatOpenAI with a bound code interpreter."""

from typing import Any

import pytest
from agents import (
    Agent,
    CodeInterpreterTool,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    set_tracing_disabled,
)
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI

from tests.e2e.conftest import Stack
from tests.proxy.conftest import KEY_A
from tests.upstream import code_call, completion

TOOL = {"type": "code_interpreter", "container": {"type": "auto"}}


@pytest.fixture(autouse=True)
def _no_tracing() -> None:
    # The Agents SDK would otherwise export traces to OpenAI.
    set_tracing_disabled(True)


@pytest.mark.parametrize("streamed", [False, True])
async def test_openai_agents_with_the_code_interpreter(stack: Stack, streamed: bool) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call("print(sum(range(101)))")]),
        completion("The sum of 1 to 100 is 5050."),
    )
    client = AsyncOpenAI(base_url=stack.url + "/v1", api_key=KEY_A, max_retries=0)
    agent = Agent(
        name="Calculator",
        instructions="Use the code interpreter for arithmetic.",
        tools=[CodeInterpreterTool(tool_config=TOOL)],  # type: ignore[arg-type]
        model=OpenAIResponsesModel(model="gpt-test", openai_client=client),
    )
    config = RunConfig(tracing_disabled=True)
    try:
        if streamed:
            run = Runner.run_streamed(agent, "Add the numbers 1 to 100.", run_config=config)
            kinds = [event.type async for event in run.stream_events()]
            assert "raw_response_event" in kinds
            result: Any = run
        else:
            result = await Runner.run(agent, "Add the numbers 1 to 100.", run_config=config)
    finally:
        await client.close()
    assert result.final_output == "The sum of 1 to 100 is 5050."
    calls = [
        item.raw_item
        for item in result.new_items
        if getattr(item.raw_item, "type", None) == "code_interpreter_call"
    ]
    [call] = calls
    assert call.code == "print(sum(range(101)))" and call.container_id.startswith("cntr_")
    sent = stack.upstream.requests[0]
    assert sent["messages"][0]["content"].startswith("Use the code interpreter")
    assert [t["function"]["name"] for t in sent["tools"]] == ["code_interpreter"]


def test_langchain_chat_openai_with_a_bound_code_interpreter(stack: Stack) -> None:
    stack.upstream.push(
        completion("Let me compute.", tool_calls=[code_call("print(2 ** 16)")]),
        completion("2 to the 16th is 65536."),
    )
    llm = ChatOpenAI(
        model="gpt-test",
        base_url=stack.url + "/v1",
        api_key=KEY_A,  # type: ignore[arg-type]
        max_retries=0,
        use_responses_api=True,
    ).bind_tools([TOOL])
    message = llm.invoke("What is 2 to the 16th?")
    assert message.text.endswith("2 to the 16th is 65536.")
    blocks = message.content
    assert isinstance(blocks, list)
    [call] = [b for b in blocks if isinstance(b, dict) and b.get("type") == "code_interpreter_call"]
    assert call["code"] == "print(2 ** 16)"
    # A follow-up turn sends the history back as input items, the interpreter call included.
    stack.upstream.push(completion("Half of it is 32768."))
    again = llm.invoke([("user", "What is 2 to the 16th?"), message, ("user", "Halve it.")])
    assert again.text == "Half of it is 32768."
    sent = stack.upstream.requests[-1]["messages"]
    assert any(
        (c.get("function") or {}).get("name") == "code_interpreter"
        for m in sent
        for c in m.get("tool_calls") or []
    )


def test_langchain_streams_from_the_responses_api(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call("print(3 * 3)")]), completion("Three times three is 9.")
    )
    llm = ChatOpenAI(
        model="gpt-test",
        base_url=stack.url + "/v1",
        api_key=KEY_A,  # type: ignore[arg-type]
        max_retries=0,
        use_responses_api=True,
        streaming=True,
    ).bind_tools([TOOL])
    chunks = list(llm.stream("3*3?"))
    text = "".join(c.text for c in chunks)
    assert text == "Three times three is 9."
