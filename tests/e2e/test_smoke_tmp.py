import pytest
pytestmark = [pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"), pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning")]
from tests.e2e.conftest import Stack
from tests.upstream import code_call, completion


def test_smoke(stack: Stack) -> None:
    stack.upstream.push(
        completion("Let me compute.", tool_calls=[code_call("print(6 * 7)")]),
        completion("It is 42."),
    )
    client = stack.client()
    assistant = client.beta.assistants.create(model="gpt-test", tools=[{"type": "code_interpreter"}], instructions="Be brief.")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "6*7?"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    print(run)
    msgs = client.beta.threads.messages.list(thread_id=thread.id, order="asc")
    for m in msgs.data:
        print(m.role, m.content)
    steps = client.beta.threads.runs.steps.list(thread_id=thread.id, run_id=run.id, order="asc")
    for s in steps.data:
        print(s.type, s.status, s.step_details)
    print(stack.upstream.requests[0]["messages"])
    assert run.status == "completed"


from openai import AssistantEventHandler
import time

class Handler(AssistantEventHandler):
    def __init__(self):
        super().__init__()
        self.log = []
    def on_event(self, event):
        self.log.append(event.event)
    def on_text_created(self, text):
        self.log.append("text_created")
    def on_text_delta(self, delta, snapshot):
        self.log.append(("delta", delta.value))
    def on_tool_call_created(self, tool_call):
        self.log.append(("tool", tool_call.type))
    def on_tool_call_delta(self, delta, snapshot):
        if delta.type == "code_interpreter":
            if delta.code_interpreter.input:
                self.log.append(("input", delta.code_interpreter.input))
            if delta.code_interpreter.outputs:
                for o in delta.code_interpreter.outputs:
                    self.log.append(("out", o.type))


def test_stream(stack: Stack) -> None:
    stack.upstream.push(
        completion("Let me compute.", tool_calls=[code_call("print(6 * 7)")]),
        completion("It is 42."),
    )
    client = stack.client()
    assistant = client.beta.assistants.create(model="gpt-test", tools=[{"type": "code_interpreter"}])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "6*7?"}])
    t0 = time.time()
    handler = Handler()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=handler) as stream:
        stream.until_done()
    print(time.time() - t0)
    for x in handler.log:
        print(x)
    print(handler.get_final_run().status)
    print([ (m.id, m.content) for m in handler.get_final_messages()])

from tests.upstream import tool_call

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}

def test_functions(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[tool_call("get_weather", '{"city": "Paris"}', "call_w")]),
        completion("It is sunny in Paris."),
    )
    client = stack.client()
    assistant = client.beta.assistants.create(model="gpt-test", tools=[{"type": "code_interpreter"}, WEATHER])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather?"}])

    class H(AssistantEventHandler):
        def on_event(self, event):
            print("1>", event.event)
            if event.event == "thread.run.requires_action":
                calls = event.data.required_action.submit_tool_outputs.tool_calls
                with client.beta.threads.runs.submit_tool_outputs_stream(
                    thread_id=self.current_run.thread_id, run_id=self.current_run.id,
                    tool_outputs=[{"tool_call_id": c.id, "output": "sunny"} for c in calls],
                    event_handler=H2()) as s:
                    for text in s.text_deltas:
                        print("text", text)

    class H2(AssistantEventHandler):
        def on_event(self, event):
            print("2>", event.event)

    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=H()) as stream:
        stream.until_done()
    runs = client.beta.threads.runs.list(thread_id=thread.id)
    print(runs.data[0].status, runs.data[0].usage)
    steps = client.beta.threads.runs.steps.list(thread_id=thread.id, run_id=runs.data[0].id, order="asc")
    for s in steps.data:
        print(s.type, s.status, s.step_details)
    print(stack.upstream.requests[1]["messages"][1:])
