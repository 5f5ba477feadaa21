"""The interpreter as the model sees it: the tool, the system note, arguments, tool results, and
the plan read from a request's tools."""

from typing import Any

import pytest

from executor.api import ExecutionError, ExecutionResult, RichOutput
from proxy.errors import InvalidRequestError
from proxy.interpreter import (
    SYSTEM_NOTE,
    TOOL,
    TOOL_NAME,
    add_system_note,
    clip,
    parse_arguments,
    plan_request,
    strip_ansi,
    system_note,
    tool_result,
)


def result(**fields: Any) -> ExecutionResult:
    return ExecutionResult(session_id="cntr_x", language="python", **fields)


def read_back(res: ExecutionResult, **kw: Any) -> str:
    options: dict[str, Any] = {"saved_files": [], "images": 0, "limit": 20_000}
    options.update(kw)
    return tool_result(res, **options)


# What the model is given


def test_the_tool_is_a_function_named_code_interpreter() -> None:
    assert TOOL["type"] == "function"
    assert TOOL["function"]["name"] == TOOL_NAME == "code_interpreter"
    parameters = TOOL["function"]["parameters"]
    assert parameters["required"] == ["code"]
    assert "python" in parameters["properties"]["language"]["enum"]


def test_the_system_note_lists_the_files_in_mnt_data() -> None:
    assert system_note([]) == SYSTEM_NOTE
    note = system_note([("/mnt/data/sales.csv", 120), ("/mnt/data/x.txt", 3)])
    assert note.startswith(SYSTEM_NOTE)
    assert "- /mnt/data/sales.csv (120 bytes)\n- /mnt/data/x.txt (3 bytes)" in note


def test_the_note_joins_a_leading_system_message() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    out = add_system_note(messages, "NOTE")
    assert out == [
        {"role": "system", "content": "Be brief.\n\nNOTE"},
        {"role": "user", "content": "hi"},
    ]
    assert messages[0]["content"] == "Be brief."  # the caller's list is left alone


def test_the_note_joins_a_developer_message_in_parts() -> None:
    parts = [{"type": "text", "text": "Be brief."}]
    out = add_system_note([{"role": "developer", "content": parts}], "NOTE")
    assert out[0]["content"] == [*parts, {"type": "text", "text": "NOTE"}]


def test_without_a_system_message_the_note_comes_first() -> None:
    out = add_system_note([{"role": "user", "content": "hi"}], "NOTE")
    assert out == [{"role": "system", "content": "NOTE"}, {"role": "user", "content": "hi"}]
    assert add_system_note([], "NOTE") == [{"role": "system", "content": "NOTE"}]


# Arguments the model sends


def test_arguments_give_code_and_language() -> None:
    assert parse_arguments('{"code": "print(1)"}') == ("print(1)", "python")
    assert parse_arguments('{"code": "ls", "language": "bash"}') == ("ls", "bash")
    assert parse_arguments('{"code": "x", "language": null}') == ("x", "python")


def test_bare_code_instead_of_json_is_taken_as_python() -> None:
    assert parse_arguments("print('hi')") == ("print('hi')", "python")


@pytest.mark.parametrize(
    "raw",
    ["", "   ", '"just a string"', "[1]", '{"language": "python"}', '{"code": 5}'],
)
def test_unusable_arguments_are_an_error_for_the_model(raw: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_arguments(raw)


def test_a_language_that_is_not_a_string_is_an_error() -> None:
    with pytest.raises(InvalidRequestError, match="language"):
        parse_arguments('{"code": "x", "language": 3}')


# What the model reads back


def test_nothing_to_report() -> None:
    assert read_back(result()) == "[no output]"


def test_streams_results_and_errors_are_labelled() -> None:
    res = result(
        stdout="\x1b[31mred\x1b[0m out\n",
        stderr="warn\n",
        results=[
            RichOutput(kind="execute_result", data={"text/plain": "42"}),
            RichOutput(kind="display_data", data={"text/plain": "<Figure>"}),
        ],
        error=ExecutionError(
            name="ValueError", value="bad", traceback=["Trace", "ValueError: bad"]
        ),
    )
    text = read_back(res)
    assert text == (
        "[stdout]\nred out\n\n[stderr]\nwarn\n\n[result]\n42\n[error]\nTrace\nValueError: bad"
    )
    assert "<Figure>" not in text  # displays are images for the user, not text for the model


def test_an_error_without_traceback_names_itself() -> None:
    res = result(error=ExecutionError(name="Killed", value="out of memory"))
    assert read_back(res) == "[error]\nKilled: out of memory"


def test_limits_restarts_files_and_exit_codes_are_said() -> None:
    res = result(
        stdout="x",
        stdout_truncated=True,
        stderr_truncated=True,
        timed_out=True,
        state_lost=True,
        exit_code=3,
    )
    text = read_back(res, saved_files=[("/mnt/data/a.csv", 10)], images=2)
    for part in (
        "[stdout was truncated]",
        "[stderr was truncated]",
        "[the execution timed out and was stopped]",
        "[the sandbox was restarted: variables and imports are gone",
        "[2 image(s) displayed to the user]",
        "[files saved and given to the user]\n/mnt/data/a.csv (10 bytes)",
        "[exit code 3]",
    ):
        assert part in text
    assert "[exit code" not in read_back(result(exit_code=0))


def test_a_long_result_keeps_its_head_and_tail() -> None:
    res = result(stdout="".join(f"line {i}\n" for i in range(10_000)))
    text = read_back(res, limit=1000)
    assert len(text) < 1100
    assert text.startswith("[stdout]\nline 0\n")
    assert text.rstrip().endswith("line 9999")
    assert "characters omitted]" in text


def test_clip_and_strip_ansi() -> None:
    assert clip("short", 10) == "short"
    clipped = clip("a" * 50 + "b" * 50, 30)
    assert clipped.startswith("a" * 20) and clipped.endswith("b" * 10)
    assert "[70 characters omitted]" in clipped
    assert strip_ansi("\x1b[1;32mok\x1b[0m \x1b[?25h") == "ok "


# The plan a request's tools make


def test_no_tools_or_no_interpreter_is_no_plan() -> None:
    assert plan_request({}) is None
    assert plan_request({"tools": [{"type": "function", "function": {"name": "f"}}]}) is None


def test_the_interpreter_tool_with_a_container_and_files() -> None:
    mine = {"type": "function", "function": {"name": "lookup"}}
    plan = plan_request(
        {
            "tools": [
                mine,
                {
                    "type": "code_interpreter",
                    "container": {"type": "auto", "file_ids": ["file-1", "file-2", "file-1"]},
                    "transcript": "markdown",
                },
            ]
        }
    )
    assert plan is not None
    assert plan.container is None
    assert plan.file_ids == ["file-1", "file-2"]
    assert plan.client_tools == [mine]
    assert plan.transcript == "markdown" and not plan.by_policy


def test_a_named_container_and_top_level_file_ids() -> None:
    plan = plan_request(
        {"tools": [{"type": "code_interpreter", "container": "cntr_abc", "file_ids": ["file-9"]}]}
    )
    assert plan is not None
    assert (plan.container, plan.file_ids) == ("cntr_abc", ["file-9"])


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ({"type": "code_interpreter"}, "tools"),
        (["not a tool"], "tools[0]"),
        ([{"type": "code_interpreter", "container": {"type": "other"}}], "tools[0].container.type"),
        ([{"type": "code_interpreter", "container": 5}], "tools[0].container"),
        (
            [{"type": "code_interpreter", "container": {"file_ids": "file-1"}}],
            "tools[0].container.file_ids",
        ),
        (
            [{"type": "function", "function": {"name": "code_interpreter"}}],
            "tools[0].function.name",
        ),
    ],
)
def test_bad_tools_name_the_field(tools: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        plan_request({"tools": tools})
    assert caught.value.param == param
    assert caught.value.status == 400
