"""Connects to the front door's MCP endpoint as a remote connector does, with the official
Python SDK's OAuth client (`mcp.client.auth.OAuthClientProvider`): discovery from the 401
(RFC 9728), authorization server metadata (RFC 8414), dynamic client registration
(RFC 7591), the authorization-code flow with PKCE and `resource`, then lists the tools and
calls execute_request with the access token.

usage: python oauth_client.py URL
env:   OAUTH_API_KEY=<api key>   what the "user" pastes into the sign-in page

The browser is played by this script: the redirect handler opens the authorization URL,
reads the sign-in form, submits it with the API key and "allow", and hands the code from
the redirect to the callback handler. Prints one JSON object (the last line of stdout);
exits 0 when every step behaved, 1 otherwise (reasons on stderr).
"""

import asyncio
import json
import os
import re
import sys
from html import unescape
from urllib.parse import parse_qs, urljoin, urlparse

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

REDIRECT_URI = "http://127.0.0.1:9/callback"


class Memory:
    """Token storage in memory (the TokenStorage protocol)."""

    def __init__(self):
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info):
        self.client_info = client_info


async def main(url: str) -> int:
    key = os.environ["OAUTH_API_KEY"]
    report = {"pages": []}
    redirected = asyncio.get_running_loop().create_future()

    async def open_browser(authorization_url: str) -> None:
        report["authorization_url"] = authorization_url
        async with httpx2.AsyncClient(follow_redirects=False, timeout=30) as browser:
            page = await browser.get(authorization_url)
            report["pages"].append(page.status_code)
            html = page.text
            report["consent_names_client"] = "turbobackend test connector" in html
            action = re.search(r'<form method="post" action="([^"]+)"', html).group(1)
            fields = {
                unescape(m.group(1)): unescape(m.group(2))
                for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html)
            }
            fields["api_key"] = key
            fields["decision"] = "allow"
            done = await browser.post(urljoin(authorization_url, action), data=fields)
            report["pages"].append(done.status_code)
            location = done.headers.get("location", "")
            report["redirected_to"] = location.split("?")[0]
            q = parse_qs(urlparse(location).query)
            redirected.set_result(
                AuthorizationCodeResult(
                    code=q.get("code", [""])[0], state=q.get("state", [None])[0], iss=q.get("iss", [None])[0]
                )
            )

    async def callback():
        return await redirected

    storage = Memory()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="turbobackend test connector",
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=open_browser,
        callback_handler=callback,
    )
    problems = []
    http = httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(30, read=60))
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
        tools = (await c.list_tools()).tools
        report["tools"] = sorted(t.name for t in tools)
        r = await c.call_tool("execute_request", {"description": "Create a simple API with a users endpoint"})
        report["execute"] = r.structured_content
        if r.is_error or not r.structured_content:
            problems.append("execute_request failed")
    report["client_id"] = storage.client_info.client_id if storage.client_info else None
    report["token_type"] = storage.tokens.token_type if storage.tokens else None
    report["access_token_prefix"] = storage.tokens.access_token[:5] if storage.tokens else None
    report["has_refresh_token"] = bool(storage.tokens and storage.tokens.refresh_token)
    for p in problems:
        print(p, file=sys.stderr)
    print(json.dumps(report))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
