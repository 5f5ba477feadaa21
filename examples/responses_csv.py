"""The Responses API with the code interpreter, the way OpenAI's own docs use it.

Uploads sales.csv, asks for totals and a chart in a container, continues the conversation with
`previous_response_id` (same container, same Python state), then downloads the chart the code
wrote through the Containers API, using the `container_file_citation` in the answer.

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=my-client-key \\
        python examples/responses_csv.py [model]
"""

import sys
from pathlib import Path

from openai import OpenAI

model = sys.argv[1] if len(sys.argv) > 1 else "gpt-4o"
client = OpenAI()

data = client.files.create(
    file=(Path(__file__).with_name("sales.csv")).open("rb"), purpose="assistants"
)
tools = [{"type": "code_interpreter", "container": {"type": "auto", "file_ids": [data.id]}}]

first = client.responses.create(
    model=model,
    tools=tools,  # type: ignore[arg-type]
    input="Load /mnt/data/sales.csv into a DataFrame `df` and give the revenue per region.",
    include=["code_interpreter_call.outputs"],
)
print(first.output_text)
for item in first.output:
    if item.type == "code_interpreter_call":
        print(f"[ran in {item.container_id}]\n{item.code}")
        for output in item.outputs or []:
            if output.type == "logs":
                print(f"[logs] {output.logs}")

with client.responses.stream(
    model=model,
    tools=tools,  # type: ignore[arg-type]
    previous_response_id=first.id,
    input="Plot the monthly revenue per region from `df` and save it as /mnt/data/revenue.png.",
) as stream:
    for event in stream:
        if event.type == "response.output_text.delta":
            print(event.delta, end="", flush=True)
    second = stream.get_final_response()
print()

for item in second.output:
    if item.type != "message":
        continue
    for part in item.content:
        for note in getattr(part, "annotations", []):
            if note.type == "container_file_citation":
                content = client.containers.files.content.retrieve(
                    note.file_id, container_id=note.container_id
                )
                Path(note.filename).write_bytes(content.read())
                print(f"saved {note.filename}")
