"""A data-analysis conversation over an uploaded CSV, with the unchanged OpenAI SDK.

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=<codeproxy key> \\
        python examples/analyze_csv.py [model]

The model writes and runs code in codeproxy's sandbox; the chart it draws is downloaded to
the current folder.
"""

import sys
from pathlib import Path

from openai import OpenAI

model = sys.argv[1] if len(sys.argv) > 1 else "gpt-4o"
client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY

csv = client.files.create(file=Path(__file__).with_name("sales.csv"), purpose="assistants")
tools = [{"type": "code_interpreter", "container": {"type": "auto", "file_ids": [csv.id]}}]
messages = [
    {"role": "user", "content": "Load /mnt/data/sales.csv. What is the total revenue per region?"}
]

first = client.chat.completions.create(model=model, messages=messages, tools=tools)
print("assistant:", first.choices[0].message.content, "\n")

# Only the visible reply goes back: codeproxy remembers the code that ran and its sandbox.
messages += [
    {"role": "assistant", "content": first.choices[0].message.content},
    {
        "role": "user",
        "content": "Plot monthly revenue per region and save the chart as /mnt/data/revenue.png.",
    },
]
second = client.chat.completions.create(model=model, messages=messages, tools=tools)
print("assistant:", second.choices[0].message.content, "\n")

# Every run is also listed in a structured form, with the files it produced.
for execution in second.model_extra["code_interpreter"]["executions"]:
    for saved in execution["files"] + execution["images"]:
        Path(saved["filename"]).write_bytes(client.files.content(saved["file_id"]).read())
        print(f"saved {saved['filename']} ({saved['bytes']} bytes)")
