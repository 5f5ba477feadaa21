"""The Files API through a real server, driven by the OpenAI SDK."""

import io

import httpx
import openai
import pytest

from tests.conftest import DATABASES
from tests.proxy.conftest import KEY_A, KEY_B, sdk

pytestmark = pytest.mark.parametrize("database_url", DATABASES, indirect=True)


def test_upload_retrieve_download_delete(proxy_url: str) -> None:
    client = sdk(proxy_url)
    payload = b"a,b\n1,2\n" * 1000
    created = client.files.create(file=("data.csv", io.BytesIO(payload)), purpose="assistants")
    assert created.id.startswith("file-")
    assert created.bytes == len(payload)
    assert created.filename == "data.csv"
    assert created.purpose == "assistants"
    assert created.status == "processed"
    assert created.expires_at is None

    fetched = client.files.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()

    content = client.files.content(created.id)
    assert content.read() == payload
    assert content.response.headers["content-type"].startswith("text/csv")
    assert 'filename="data.csv"' in content.response.headers["content-disposition"]

    deleted = client.files.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    with pytest.raises(openai.NotFoundError) as exc:
        client.files.retrieve(created.id)
    assert exc.value.body["message"] == f"No such File object: {created.id}"
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)


def test_list_paginates_across_pages_in_order(proxy_url: str) -> None:
    client = sdk(proxy_url)
    ids = [
        client.files.create(file=(f"f{i}.txt", io.BytesIO(b"x")), purpose="user_data").id
        for i in range(5)
    ]
    first = client.files.list(limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2]
    assert first.has_more is True
    # The SDK follows `after` cursors through every page.
    assert [f.id for f in client.files.list(limit=2)] == ids[::-1]
    assert [f.id for f in client.files.list(limit=2, order="asc")] == ids
    raw = httpx.get(
        f"{proxy_url}/v1/files", params={"limit": 10}, headers={"authorization": f"Bearer {KEY_A}"}
    ).json()
    assert raw["has_more"] is False
    assert raw["first_id"] == ids[-1] and raw["last_id"] == ids[0]


def test_list_filters_by_purpose(proxy_url: str) -> None:
    client = sdk(proxy_url)
    a = client.files.create(file=("a.txt", io.BytesIO(b"a")), purpose="assistants")
    client.files.create(file=("b.txt", io.BytesIO(b"b")), purpose="user_data")
    assert [f.id for f in client.files.list(purpose="assistants")] == [a.id]


def test_expires_after_sets_expiry(proxy_url: str) -> None:
    client = sdk(proxy_url)
    created = client.files.create(
        file=("a.txt", io.BytesIO(b"a")),
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at == created.created_at + 3600


def test_tenants_cannot_see_each_others_files(proxy_url: str) -> None:
    a, b = sdk(proxy_url, KEY_A), sdk(proxy_url, KEY_B)
    mine = a.files.create(file=("secret.txt", io.BytesIO(b"secret")), purpose="assistants")
    assert list(b.files.list()) == []
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        b.files.content(mine.id)
    with pytest.raises(openai.NotFoundError):
        b.files.delete(mine.id)
    assert a.files.content(mine.id).read() == b"secret"
