"""Drives the front door's MCP endpoint with the official Python SDK (mcp 2.x).

usage: python mcp_client.py URL
env:   MCP_MODE=legacy|auto|2026-07-28   legacy = initialize handshake; auto = server/discover
                                        probe, falling back to initialize; 2026-07-28 = modern only
       MCP_BEARER=<api key>             sent as Authorization: Bearer <key>

Lists the tools, calls execute_request, then get_request_status, get_project, list_projects
and cancel_request on what it created (the SDK validates each structured result against the
tool's output schema), and get_request_status with an unknown id. Prints one JSON object (the last line
of stdout) with what it saw; exits 0 when every call behaved, 1 otherwise (reasons on stderr).
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def text_of(result):
    return "".join(getattr(b, "text", "") for b in result.content)


async def main(url: str) -> int:
    headers = {"Authorization": f"Bearer {os.environ['MCP_BEARER']}"}
    mode = os.environ.get("MCP_MODE", "legacy")
    problems = []
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as c:
        report = {"mode": mode, "protocol": str(c.protocol_version)}
        info = getattr(c, "server_info", None)
        report["server"] = getattr(info, "name", None)
        tools = (await c.list_tools()).tools
        report["tools"] = sorted(t.name for t in tools)
        report["tools_with_output_schema"] = sorted(t.name for t in tools if t.output_schema)
        report["tools_with_annotations"] = sorted(t.name for t in tools if t.annotations)

        r = await c.call_tool("execute_request", {"description": "Create a simple API with a users endpoint"})
        report["execute_is_error"] = bool(r.is_error)
        report["execute"] = r.structured_content
        if r.is_error or not r.structured_content:
            problems.append(f"execute_request failed: {text_of(r)}")
        elif json.loads(text_of(r)) != r.structured_content:
            problems.append("execute_request: text content differs from structuredContent")

        if r.structured_content:
            s = await c.call_tool("get_request_status", {"request_id": r.structured_content["request_id"]})
            report["status_is_error"] = bool(s.is_error)
            report["status"] = s.structured_content
            if s.is_error:
                problems.append(f"get_request_status failed: {text_of(s)}")
            # The SDK validates every structured result against the tool's output schema.
            p = await c.call_tool("get_project", {"project_id": r.structured_content["project_id"]})
            report["project"] = p.structured_content
            lp = await c.call_tool("list_projects", {})
            report["projects"] = lp.structured_content
            x = await c.call_tool("cancel_request", {"request_id": r.structured_content["request_id"]})
            report["cancelled"] = x.structured_content
            for name, res in (("get_project", p), ("list_projects", lp), ("cancel_request", x)):
                if res.is_error:
                    problems.append(f"{name} failed: {text_of(res)}")

        u = await c.call_tool("get_request_status", {"request_id": "req_doesnotexist"})
        report["unknown_is_error"] = bool(u.is_error)
        report["unknown_text"] = text_of(u)
        if not u.is_error:
            problems.append("an unknown request id was not a tool error")

    for p in problems:
        print(p, file=sys.stderr)
    print(json.dumps(report))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
