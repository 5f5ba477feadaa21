"""The example scripts run unchanged against a real server (with a scripted model)."""

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import REPO, Stack
from tests.proxy.conftest import KEY_A
from tests.upstream import code_call, completion

TOTALS = (
    "import pandas as pd\n"
    "df = pd.read_csv('/mnt/data/sales.csv')\n"
    "print(df.groupby('region')['revenue'].sum().to_dict())"
)
PLOT = (
    "import matplotlib.pyplot as plt\n"
    "df.pivot(index='month', columns='region', values='revenue').plot()\n"
    "plt.savefig('/mnt/data/revenue.png')"
)


def run_example(stack: Stack, name: str, cwd: Path) -> str:
    env = {**os.environ, "OPENAI_BASE_URL": stack.url + "/v1", "OPENAI_API_KEY": KEY_A}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), "gpt-test"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def script(stack: Stack) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call(TOTALS)]),
        completion("North: 567, south: 415."),
        # Turn 2 reuses `df` from turn 1: the same kernel, found from the visible history.
        completion(tool_calls=[code_call(PLOT)]),
        completion("Here is the chart: ![revenue](sandbox:/mnt/data/revenue.png)"),
    )


def test_analyze_csv(stack: Stack, tmp_path: Path) -> None:
    script(stack)
    out = run_example(stack, "analyze_csv.py", tmp_path)
    assert "North: 567, south: 415." in out
    assert "saved revenue.png" in out
    assert (tmp_path / "revenue.png").read_bytes().startswith(b"\x89PNG")
    assert "{'north': 567, 'south': 415}" in stack.upstream.requests[1]["messages"][-1]["content"]
    assert "Error" not in stack.upstream.requests[3]["messages"][-1]["content"]


def test_analyze_csv_streamed(stack: Stack, tmp_path: Path) -> None:
    script(stack)
    out = run_example(stack, "analyze_csv_stream.py", tmp_path)
    assert "```python\nimport pandas as pd" in out
    assert "{'north': 567, 'south': 415}" in out
    assert "sandbox:" not in out and "/download/revenue.png?expires=" in out


def test_responses_csv(stack: Stack, tmp_path: Path) -> None:
    stack.upstream.push(
        completion(tool_calls=[code_call(TOTALS)]),
        completion("North: 567, south: 415."),
        completion(tool_calls=[code_call(PLOT)]),
        completion("Here is the chart: [revenue.png](sandbox:/mnt/data/revenue.png)"),
    )
    out = run_example(stack, "responses_csv.py", tmp_path)
    assert "North: 567, south: 415." in out
    assert "[logs] {'north': 567, 'south': 415}" in out
    assert "Here is the chart: [revenue.png](sandbox:/mnt/data/revenue.png)" in out
    assert "saved revenue.png" in out
    assert (tmp_path / "revenue.png").read_bytes().startswith(b"\x89PNG")
    # The second turn ran in the first turn's kernel: `df` was still there.
    assert "Error" not in stack.upstream.requests[3]["messages"][-1]["content"]


SOLVE = "from sympy import solve, symbols\nx = symbols('x')\nprint(solve(3 * x + 11 - 14, x))"


def test_assistants_quickstart(stack: Stack, tmp_path: Path) -> None:
    stack.upstream.push(
        completion("Let me solve it.", tool_calls=[code_call(SOLVE)]),
        completion("Jane Doe, the solution is x = 1."),
    )
    out = run_example(stack, "assistants_quickstart.py", tmp_path)
    assert "assistant > Let me solve it." in out
    assert "assistant > code_interpreter\n" in out
    assert "from sympy import solve, symbols" in out
    assert "output >\n\n[1]\n" in out
    assert out.rstrip().endswith("assistant > Jane Doe, the solution is x = 1.")
    # The run's instructions replace the assistant's, as in OpenAI's API.
    system = stack.upstream.requests[0]["messages"][0]["content"]
    assert system.startswith("Please address the user as Jane Doe.")
    assert "math tutor" not in system


def test_assistants_files(stack: Stack, tmp_path: Path) -> None:
    code = (
        "import pandas as pd, matplotlib.pyplot as plt\n"
        "df = pd.read_csv('/mnt/data/sales.csv')\n"
        "totals = df.groupby('region')['revenue'].sum()\n"
        "totals.to_csv('/mnt/data/totals.csv')\n"
        "totals.plot.bar()\n"
        "plt.show()"
    )
    stack.upstream.push(
        completion(tool_calls=[code_call(code)]),
        completion("Here are the [totals](sandbox:/mnt/data/totals.csv)."),
    )
    out = run_example(stack, "assistants_files.py", tmp_path)
    assert "run: completed" in out and "code > import pandas" in out
    assert "saved totals.csv" in out and "saved chart file-" in out
    assert (tmp_path / "totals.csv").read_text().startswith("region,revenue")
    [chart] = tmp_path.glob("file-*.png")
    assert chart.read_bytes().startswith(b"\x89PNG")
