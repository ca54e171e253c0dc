"""What `Router.add_worker` accepts (the gateway's admin API passes URLs from outside), and
the messages a request for the wrong kind of model gets."""

from __future__ import annotations

import pytest

from modelserver.errors import WrongModelKind
from modelserver.routing import Router

from .helpers import CHAT, URLS, chat_answer, chat_body, make_router


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("http://h:1/v1", "'/v1'"),
        ("http://h:1/v1/chat/completions", "'/v1/chat/completions'"),
        ("http://h:1?x=1", "'?x=1'"),
        ("http://h:1/#top", "'/#top'"),
    ],
)
def test_a_worker_url_with_a_path_is_refused_naming_the_path(url: str, extra: str) -> None:
    router = Router()
    with pytest.raises(ValueError, match="expected http\\(s\\)://HOST:PORT") as caught:
        router.add_worker("m", url)
    assert f"without {extra}" in str(caught.value)
    assert "adds each request's own path" in str(caught.value)
    assert router.models() == {}


async def test_a_worker_url_with_only_a_trailing_slash_is_accepted() -> None:
    router, transport, *_ = make_router(lambda r: chat_answer(), urls=URLS[:1])
    router.drain(URLS[0])
    router.add_worker("m", "http://h:9/")
    assert (await router.forward("m", CHAT, chat_body())).worker == "http://h:9"
    assert transport.requests[-1].url == "http://h:9/v1/chat/completions"


def test_the_wrong_kind_of_request_is_named_with_the_right_article() -> None:
    assert str(WrongModelKind("e", "chat", "embedding")) == (
        "model 'e' is a chat model; it cannot serve an embedding request"
    )
    assert str(WrongModelKind("c", "embedding", "chat")) == (
        "model 'c' is an embedding model; it cannot serve a chat request"
    )
