"""The upstream's models, their "with code" twins, and looking one up."""

import openai
import pytest

from tests.proxy.conftest import sdk
from tests.upstream import ScriptedUpstream


def test_the_list_has_a_with_code_twin_of_each_model(proxy_url: str) -> None:
    assert [m.id for m in sdk(proxy_url).models.list()] == ["gpt-test", "gpt-test+code"]


def test_a_model_is_found_in_the_list_when_the_upstream_cannot_retrieve_one(
    proxy_url: str,
) -> None:
    client = sdk(proxy_url)
    assert client.models.retrieve("gpt-test").id == "gpt-test"
    virtual = client.models.retrieve("gpt-test+code")
    assert (virtual.id, virtual.owned_by) == ("gpt-test+code", "test")


def test_an_upstream_that_can_retrieve_is_asked(proxy_url: str, upstream: ScriptedUpstream) -> None:
    upstream.retrievable = True
    assert sdk(proxy_url).models.retrieve("gpt-test").owned_by == "retrieved"
    # A virtual name is the list's business either way.
    assert sdk(proxy_url).models.retrieve("gpt-test+code").owned_by == "test"


@pytest.mark.parametrize("model", ["no-such-model", "no-such-model+code"])
def test_an_unknown_model_is_a_404(proxy_url: str, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(proxy_url).models.retrieve(model)
    assert caught.value.code == "model_not_found"
    assert caught.value.body == {
        "message": f"The model `{model}` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
