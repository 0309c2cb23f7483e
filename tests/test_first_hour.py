"""What a newcomer opens first works offline: the API's ``/docs`` page."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from starter import api
from starter.api import SWAGGER_DIR, create_app


class Assets(HTMLParser):
    """Every ``src`` and ``href`` a browser would fetch for the page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


async def _no_services() -> None:
    raise AssertionError("the docs must not need Temporal or the database")


async def test_docs_page_loads_swagger_ui_from_the_api_itself() -> None:
    app = create_app(_no_services, "key")  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        page = await http.get("/docs")
        assert page.status_code == 200 and "SwaggerUIBundle" in page.text
        assets = Assets()
        assets.feed(page.text)
        assert len(assets.urls) == 3, assets.urls  # script, style sheet, icon
        script_urls = re.findall(r"""url: '([^']+)'""", page.text)
        assert script_urls == ["/openapi.json"]
        for url in [*assets.urls, *script_urls]:
            assert url.startswith("/") and not url.startswith("//"), url  # same origin
            resp = await http.get(url)
            assert resp.status_code == 200 and resp.content, url
        assert "validator.swagger.io" not in page.text and '"validatorUrl": null' in page.text
        assert (await http.get("/docs/oauth2-redirect")).status_code == 200
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "NOTICE"):
        assert (SWAGGER_DIR / name).is_file(), name  # shipped with their licence


async def test_an_install_without_the_files_still_serves_docs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "SWAGGER_DIR", tmp_path)  # a package built without its data
    app = create_app(_no_services, "key")  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        page = await http.get("/docs")
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
