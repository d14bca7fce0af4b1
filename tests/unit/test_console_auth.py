"""The console's guard: nothing is served without the key, the cookie never holds it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from spm_bluesky.console import ConsoleConfig, create_app
from spm_bluesky.console.auth import COOKIE, session_token
from spm_bluesky.console.server import bind, url_of

KEY = "a-secret-key-0123456789"
#: No Tiled answers here: a refused request must never reach it.
NOWHERE = "http://127.0.0.1:9"


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(ConsoleConfig(NOWHERE, KEY, None)), base_url="http://console")


def every_path() -> list[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters filled in."""
    app = create_app(ConsoleConfig(NOWHERE, KEY, None))
    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            found.append(("GET", route.path + "/console.js"))
        elif isinstance(route, Route):
            path = re.sub(r"\{seq:int\}", "1", route.path)
            path = re.sub(r"\{part\}", "timeline", path)
            path = re.sub(r"\{[^}]+\}", "x", path)
            for method in sorted(route.methods or {"GET"}):
                found.append((method, path))
    return found


@pytest.mark.parametrize(("method", "path"), every_path())
def test_every_route_refuses_a_request_without_the_key(client: TestClient, method: str,
                                                       path: str) -> None:
    if path == "/login":
        response = client.request(method, path, data={"key": "wrong"})
        assert response.status_code == (401 if method == "POST" else 200)
        assert COOKIE not in response.cookies
        return
    for headers in ({}, {"Authorization": "Apikey wrong"}, {"Authorization": f"Bearer {KEY}"},
                    {"Cookie": f"{COOKIE}={session_token('another key', 'mallory')}"}):
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path, headers)
        assert method == "HEAD" or "needs the API key" in response.text


def test_a_browser_asking_for_a_page_without_the_key_gets_the_sign_in_form(
        client: TestClient) -> None:
    response = client.get("/sessions/abc/gallery?verdict=kept", headers={"Accept": "text/html"})
    assert response.status_code == 401
    assert '<form method="post" action="/login">' in response.text
    assert 'value="/sessions/abc/gallery?verdict=kept"' in response.text


def test_signing_in_sets_an_httponly_strict_cookie_without_the_key(client: TestClient) -> None:
    response = client.post("/login", data={"key": KEY, "name": "Ada", "next": "/sessions/x"},
                           follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/sessions/x"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert KEY not in cookie
    value = response.cookies[COOKIE]
    assert value.startswith("Ada.")
    # The cookie now opens what the key opens (the request fails later, at Tiled).
    assert client.get("/static/console.js").status_code == 200
    assert client.get("/").status_code == 200


def test_a_wrong_key_or_a_bad_name_sets_no_cookie(client: TestClient) -> None:
    wrong = client.post("/login", data={"key": KEY + "x", "name": "Ada"})
    assert wrong.status_code == 401 and "That is not the key." in wrong.text
    bad_name = client.post("/login", data={"key": KEY, "name": "<script>"})
    assert bad_name.status_code == 400 and "<script>" not in bad_name.text
    assert COOKIE not in client.cookies


def test_a_forged_cookie_for_another_name_is_refused(client: TestClient) -> None:
    client.post("/login", data={"key": KEY, "name": "Ada"})
    mac = client.cookies[COOKIE].rpartition(".")[2]
    client.cookies.set(COOKIE, f"Bob.{mac}")
    assert client.get("/static/console.js").status_code == 401


def test_sign_in_never_sends_a_browser_to_another_site(client: TestClient) -> None:
    for target in ("//evil.example/", "https://evil.example/", "javascript:alert(1)"):
        response = client.post("/login", data={"key": KEY, "next": target},
                               follow_redirects=False)
        assert response.headers["location"] == "/"


def test_a_change_from_another_site_is_refused_even_with_the_cookie(
        client: TestClient) -> None:
    client.post("/login", data={"key": KEY, "name": "Ada"})
    response = client.post("/logout", headers={"Origin": "http://evil.example"},
                           follow_redirects=False)
    assert response.status_code == 403
    same = client.post("/logout", headers={"Origin": "http://console"}, follow_redirects=False)
    assert same.status_code == 303


def test_the_key_is_never_in_the_configuration_repr() -> None:
    config = ConsoleConfig(NOWHERE, KEY, Path("/tmp"))
    assert KEY not in repr(config) and "***" in repr(config)
    with pytest.raises(ValueError, match="needs an API key"):
        ConsoleConfig(NOWHERE, "", None)


def test_the_console_binds_loopback_by_default() -> None:
    config = ConsoleConfig(NOWHERE, KEY, None)
    assert config.host == "127.0.0.1" and config.loopback_only
    sock = bind(config)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
        assert url_of(sock).startswith("http://127.0.0.1:")
    finally:
        sock.close()
    assert not ConsoleConfig(NOWHERE, KEY, None, host="0.0.0.0").loopback_only
