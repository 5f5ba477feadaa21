"""The same conversation as analyze_csv.py, streamed: code, output and answer as they come.

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=<codeproxy key> \\
        python examples/analyze_csv_stream.py [model]
"""

import sys
from pathlib import Path

from openai import OpenAI

model = sys.argv[1] if len(sys.argv) > 1 else "gpt-4o"
client = OpenAI()

csv = client.files.create(file=Path(__file__).with_name("sales.csv"), purpose="assistants")
# "transcript": "markdown" shows each run's code and output in the streamed reply.
tools = [
    {
        "type": "code_interpreter",
        "transcript": "markdown",
        "container": {"type": "auto", "file_ids": [csv.id]},
    }
]
messages = [
    {"role": "user", "content": "Load /mnt/data/sales.csv. What is the total revenue per region?"}
]

for question in (None, "Plot monthly revenue per region and save it as /mnt/data/revenue.png."):
    if question is not None:
        messages += [{"role": "user", "content": question}]
    reply = ""
    with client.chat.completions.stream(model=model, messages=messages, tools=tools) as stream:
        for event in stream:
            if event.type == "content.delta":
                print(event.delta, end="", flush=True)
                reply += event.delta
    print("\n")
    messages += [{"role": "assistant", "content": reply}]
