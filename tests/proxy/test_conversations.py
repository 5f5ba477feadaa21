"""Recognising a conversation from its visible messages, and bounding what is re-inserted."""

from proxy.conversations import OMITTED, cap, hash_with_reply, prefix_hashes, rebuild


def test_prefix_hashes_ignore_system_prompts_and_content_shape() -> None:
    a = [
        {"role": "system", "content": "Today is Monday."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello "},
    ]
    b = [
        {"role": "system", "content": "Today is Tuesday."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "hello"},
    ]
    assert prefix_hashes(a) == prefix_hashes(b)
    edited = [{"role": "user", "content": "hi!"}, {"role": "assistant", "content": "hello"}]
    assert prefix_hashes(edited) != prefix_hashes(a)


def test_hashes_cover_every_assistant_prefix_longest_first() -> None:
    turn1 = [{"role": "user", "content": "1"}]
    reply1 = {"role": "assistant", "content": "one"}
    turn2 = [*turn1, reply1, {"role": "user", "content": "2"}]
    reply2 = {"role": "assistant", "content": "two"}
    hashes = prefix_hashes([*turn2, reply2, {"role": "user", "content": "3"}])
    assert hashes == [hash_with_reply(turn2, reply2), hash_with_reply(turn1, reply1)]


def test_rebuild_puts_hidden_steps_before_each_remembered_reply() -> None:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "code_interpreter", "arguments": "{}"},
            }
        ],
    }
    result = {"role": "tool", "tool_call_id": "c1", "content": "[stdout]\n1"}
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "shown with transcript"},
        {"role": "user", "content": "u2"},
    ]
    turns = [{"index": 1, "content": "model's words", "hidden": [call, result]}]
    assert rebuild(messages, turns) == [
        messages[0],
        messages[1],
        call,
        result,
        {"role": "assistant", "content": "model's words"},
        messages[3],
    ]


def test_cap_omits_oldest_outputs_then_drops_oldest_steps() -> None:
    def turn(i: int, size: int) -> dict[str, object]:
        return {
            "index": i,
            "content": f"reply {i}",
            "hidden": [
                {"role": "assistant", "content": None, "tool_calls": [{"id": f"c{i}"}]},
                {"role": "tool", "tool_call_id": f"c{i}", "content": "x" * size},
            ],
        }

    turns = [turn(1, 3000), turn(3, 3000), turn(5, 3000)]
    capped = cap(turns, 7000)
    assert capped[0]["hidden"][1]["content"] == OMITTED
    assert capped[1]["hidden"][1]["content"] == "x" * 3000
    assert turns[0]["hidden"][1]["content"] == "x" * 3000  # the input is not modified
    tiny = cap(turns, 300)  # the three steps with outputs omitted are ~140 characters each
    assert tiny[0]["hidden"] == []
    assert [m.get("content") for m in tiny[1]["hidden"]] == [None, OMITTED]
    assert [m.get("content") for m in tiny[2]["hidden"]] == [None, OMITTED]
    assert [t["hidden"] for t in cap(turns, 10)] == [[], [], []]
    assert cap(turns, 100_000) == turns
