"""Bad input gets a clear OpenAI-shaped 4xx and leaves nothing behind."""

import io
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.settings import Settings
from tests.proxy.conftest import KEY_A, sdk
from tests.servers import run_server

AUTH = {"authorization": f"Bearer {KEY_A}"}


@pytest.fixture
def small(make_settings: Callable[..., Settings]) -> Iterator[tuple[str, Settings]]:
    settings = make_settings(max_upload_bytes=10_000)
    with run_server(create_app(settings)) as url:
        yield url, settings


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert response.headers["x-request-id"].startswith("req_")
    return body["error"]


def assert_nothing_stored(url: str, settings: Settings) -> None:
    assert httpx.get(f"{url}/v1/files", headers=AUTH).json()["data"] == []
    blobs = settings.data_dir / "blobs"
    leftovers = [p for p in blobs.rglob("*") if p.is_file()]
    assert leftovers == []


def post_form(url: str, files: object = None, data: object = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/files", headers=AUTH, files=files, data=data)


def test_oversize_upload_is_413_and_kept_nowhere(small: tuple[str, Settings]) -> None:
    url, settings = small
    with pytest.raises(openai.APIStatusError) as exc:
        sdk(url).files.create(file=("big.bin", io.BytesIO(b"x" * 200_000)), purpose="assistants")
    assert exc.value.status_code == 413
    assert exc.value.code == "file_too_large"
    assert_nothing_stored(url, settings)


def test_oversize_streamed_upload_without_length(small: tuple[str, Settings]) -> None:
    url, settings = small
    boundary = "b0undary"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f'assistants\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.bin"\r\n\r\n'
        ).encode()
        for _ in range(20):
            yield b"y" * 1000
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{url}/v1/files",
        content=body(),
        headers={**AUTH, "content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert error_of(response, 413)["param"] == "file"
    assert_nothing_stored(url, settings)


def test_unknown_purpose(small: tuple[str, Settings]) -> None:
    url, settings = small
    with pytest.raises(openai.BadRequestError) as exc:
        sdk(url).files.create(file=("a.txt", io.BytesIO(b"a")), purpose="nonsense")
    assert exc.value.param == "purpose"
    assert_nothing_stored(url, settings)


def test_purpose_after_file_is_validated_and_cleaned_up(small: tuple[str, Settings]) -> None:
    url, settings = small
    boundary = "xyz"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"'
        f'\r\n\r\nhello\r\n--{boundary}\r\nContent-Disposition: form-data; name="purpose"'
        f"\r\n\r\nbogus\r\n--{boundary}--\r\n"
    ).encode()
    response = httpx.post(
        f"{url}/v1/files",
        content=body,
        headers={**AUTH, "content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert error_of(response, 400)["param"] == "purpose"
    assert_nothing_stored(url, settings)


def test_missing_file_and_missing_purpose(small: tuple[str, Settings]) -> None:
    url, settings = small
    only_purpose = post_form(url, files={"purpose": (None, "assistants")})
    assert error_of(only_purpose, 400)["param"] == "file"
    urlencoded = post_form(url, data={"purpose": "assistants"})
    assert error_of(urlencoded, 400)["code"] == "invalid_content_type"
    err = error_of(post_form(url, files={"file": ("a.txt", b"abc")}), 400)
    assert err["param"] == "purpose"
    assert_nothing_stored(url, settings)


def test_empty_and_non_multipart_bodies(small: tuple[str, Settings]) -> None:
    url, settings = small
    error_of(httpx.post(f"{url}/v1/files", headers=AUTH), 400)
    error_of(
        httpx.post(
            f"{url}/v1/files",
            headers={**AUTH, "content-type": "application/json"},
            content=b'{"purpose": "assistants"}',
        ),
        400,
    )
    empty = httpx.post(
        f"{url}/v1/files",
        content=b"--b--\r\n",
        headers={**AUTH, "content-type": "multipart/form-data; boundary=b"},
    )
    assert error_of(empty, 400)["param"] == "file"
    truncated = httpx.post(
        f"{url}/v1/files",
        content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc',
        headers={**AUTH, "content-type": "multipart/form-data; boundary=b"},
    )
    error_of(truncated, 400)
    assert_nothing_stored(url, settings)


def test_bad_expires_after(small: tuple[str, Settings]) -> None:
    url, settings = small
    for data, param in (
        (
            {"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
            "expires_after.anchor",
        ),
        (
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "ten"},
            "expires_after.seconds",
        ),
        (
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
            "expires_after.seconds",
        ),
    ):
        response = post_form(
            url, files={"file": ("a.txt", b"abc")}, data={"purpose": "assistants", **data}
        )
        assert error_of(response, 400)["param"] == param
    assert_nothing_stored(url, settings)


def test_wrong_query_types(small: tuple[str, Settings]) -> None:
    url, _ = small
    err = error_of(httpx.get(f"{url}/v1/files", params={"limit": "many"}, headers=AUTH), 400)
    assert err["param"] == "limit"
    err = error_of(httpx.get(f"{url}/v1/files", params={"limit": 0}, headers=AUTH), 400)
    assert err["param"] == "limit"
    err = error_of(httpx.get(f"{url}/v1/files", params={"order": "up"}, headers=AUTH), 400)
    assert err["param"] == "order"


def test_unknown_route_and_wrong_method(small: tuple[str, Settings]) -> None:
    url, _ = small
    assert error_of(httpx.get(f"{url}/v1/nothing-here", headers=AUTH), 404)["code"] == "unknown_url"
    error_of(httpx.put(f"{url}/v1/files", headers=AUTH), 405)


def test_filename_with_path_is_cleaned(small: tuple[str, Settings]) -> None:
    url, settings = small
    created = sdk(url).files.create(
        file=("../../etc/evil.txt", io.BytesIO(b"a")), purpose="assistants"
    )
    assert created.filename == "evil.txt"
    stored = [p for p in (settings.data_dir / "blobs").rglob("*") if p.is_file()]
    assert [p.name for p in stored] == [created.id]


def test_health_and_ready_need_no_auth(small: tuple[str, Settings]) -> None:
    url, _ = small
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/ready").json() == {"status": "ready"}


def test_upstream_unreachable_is_502(small: tuple[str, Settings]) -> None:
    url, _ = small
    with pytest.raises(openai.InternalServerError) as exc:
        sdk(url).models.list()
    assert exc.value.status_code == 502
    assert exc.value.code == "upstream_unreachable"


def test_models_pass_through(proxy_url: str) -> None:
    models = sdk(proxy_url).models.list()
    assert [m.id for m in models] == ["gpt-test", "gpt-test+code"]
    with pytest.raises(openai.AuthenticationError):
        sdk(proxy_url, "nope").models.list()


HI = [{"role": "user", "content": "hi"}]
BAD_CHATS = [
    ({"messages": HI}, "model"),
    ({"model": "x"}, "messages"),
    ({"model": "x", "messages": "hi"}, "messages"),
    ({"model": "x", "messages": [{"content": "hi"}]}, "messages[0]"),
    ({"model": "x", "messages": HI, "tools": "all"}, "tools"),
    (
        {
            "model": "x",
            "messages": HI,
            "tools": [{"type": "code_interpreter", "container": {"type": "custom"}}],
        },
        "tools[0].container.type",
    ),
    (
        {
            "model": "x",
            "messages": HI,
            "tools": [{"type": "code_interpreter", "container": {"file_ids": "file-1"}}],
        },
        "tools[0].container.file_ids",
    ),
]


def test_chat_bad_json_and_bad_fields(small: tuple[str, Settings]) -> None:
    url, _ = small
    post = f"{url}/v1/chat/completions"
    json_headers = {**AUTH, "content-type": "application/json"}
    truncated = httpx.post(post, content=b'{"model": "x", "messages": [', headers=json_headers)
    assert error_of(truncated, 400)["code"] == "invalid_json"
    error_of(httpx.post(post, content=b"[1, 2]", headers=json_headers), 400)
    for body, param in BAD_CHATS:
        assert error_of(httpx.post(post, json=body, headers=AUTH), 400)["param"] == param
    loud = httpx.post(
        post,
        json={"model": "x+code", "messages": HI},
        headers={**AUTH, "codeproxy-transcript": "loud"},
    )
    assert error_of(loud, 400)["param"] == "codeproxy-transcript"


def test_interpreter_without_an_executor_is_503(small: tuple[str, Settings]) -> None:
    url, _ = small
    response = httpx.post(
        f"{url}/v1/chat/completions",
        headers=AUTH,
        json={
            "model": "x",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "code_interpreter"}],
        },
    )
    assert error_of(response, 503)["code"] == "sandbox_unavailable"
