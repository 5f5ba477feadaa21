"""The Assistants API's code interpreter with a file in and files out, as in OpenAI's docs:
a CSV for the assistant, a run polled to its end, the answer's chart (`image_file`) and the
file it links (`file_path` annotation) downloaded to the current folder.

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=<codeproxy key> \\
        python examples/assistants_files.py [model]
"""

import sys
from pathlib import Path

from openai import OpenAI

model = sys.argv[1] if len(sys.argv) > 1 else "gpt-4o"
client = OpenAI()

file = client.files.create(file=Path(__file__).with_name("sales.csv"), purpose="assistants")
assistant = client.beta.assistants.create(
    instructions="You are a data analyst. When asked about data, write and run code to answer.",
    model=model,
    tools=[{"type": "code_interpreter"}],
    tool_resources={"code_interpreter": {"file_ids": [file.id]}},
)
thread = client.beta.threads.create(
    messages=[
        {
            "role": "user",
            "content": "Chart the revenue per region and save the totals as a CSV file.",
        }
    ]
)
run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
print("run:", run.status)

for step in client.beta.threads.runs.steps.list(thread_id=thread.id, run_id=run.id, order="asc"):
    if step.step_details.type == "tool_calls":
        for call in step.step_details.tool_calls:
            if call.type == "code_interpreter":
                print("code >", call.code_interpreter.input)

for message in client.beta.threads.messages.list(thread_id=thread.id, run_id=run.id, order="asc"):
    for content in message.content:
        if content.type == "image_file":
            name = f"{content.image_file.file_id}.png"
            Path(name).write_bytes(client.files.content(content.image_file.file_id).read())
            print("saved chart", name)
        elif content.type == "text":
            print("assistant >", content.text.value)
            for annotation in content.text.annotations:
                if annotation.type == "file_path":
                    name = annotation.text.rsplit("/", 1)[-1]
                    data = client.files.content(annotation.file_path.file_id).read()
                    Path(name).write_bytes(data)
                    print("saved", name)
