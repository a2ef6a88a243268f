"""/docs and /redoc work without internet access: every script, stylesheet and icon they load is served locally."""

from __future__ import annotations

import re

import httpx
import pytest

from api.main import create_app
from shared.config import Settings

ASSET = re.compile(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]|url:\s*['"]([^'"]+)['"]""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_loads_only_assets_the_api_serves(page: str) -> None:
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        html = (await client.get(page)).text
        assets = [a or b for a, b in ASSET.findall(html)]
        scripts = [a for a in assets if a.endswith(".js")]
        assert scripts, f"{page} loads no script: {html[:500]}"
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
            response = await client.get(asset)
            assert response.status_code == 200, asset
            if asset.endswith(".js"):
                assert len(response.content) > 100_000, f"{asset} is not the UI bundle"
        assert "://" not in html, f"{page} refers to another host"
