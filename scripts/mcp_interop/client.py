"""An MCP agent written with the official MCP Python SDK, against an MCP server behind
`tessera gate`. It authenticates the SDK's own way (client credentials with a secret, or
private_key_jwt), discovers the broker from the gate's 401 and metadata, and checks that a
gated tool runs only once approved, exactly once, with the arguments approved.

Usage: client.py secret|key|bearer MCP_URL BROKER_URL CLIENT_ID SECRET_FILE|KEY_PEM|TOKEN_FILE OPERATOR_TOKEN_FILE UPSTREAM_LOG

`bearer` gives the SDK a ready access token in an `Authorization` header (no OAuth provider),
and then also checks a denial, and sends what the gate must refuse as the SDK never would:
a batch, a duplicated member, a mismatched `Mcp-Name`, a token without `mcp:use`.
"""

import asyncio
import json
import sys

import httpx2
from mcp import ClientSession
from mcp.client.auth import TokenStorage
from mcp.client.auth.extensions.client_credentials import (
    ClientCredentialsOAuthProvider,
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

mode, mcp_url, broker, client_id, credential_file, operator_token_file, upstream_log = sys.argv[1:8]
# bearer mode: a client id and secret that may mint tokens without mcp:use (the same agent).
client_id_for_scope_check, secret_for_scope_check = (sys.argv[8:10] + ["", ""])[:2]


class Memory(TokenStorage):
    def __init__(self):
        self.tokens, self.client = None, None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info):
        self.client = info


def ran(name):
    try:
        with open(upstream_log, encoding="utf-8") as f:
            calls = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return [c["arguments"] for c in calls if c["name"] == name]


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL ({mode}): {what}")
    print(f"  ok ({mode}): {what}")


def auth():
    secret_or_key = open(credential_file, encoding="utf-8").read().strip()
    if mode == "bearer":
        return None
    if mode == "secret":
        return ClientCredentialsOAuthProvider(
            server_url=mcp_url, storage=Memory(), client_id=client_id, client_secret=secret_or_key, issuer=broker
        )
    params = SignedJWTParameters(
        issuer=client_id, subject=client_id, signing_key=secret_or_key, signing_algorithm="EdDSA"
    )
    return PrivateKeyJWTOAuthProvider(
        server_url=mcp_url,
        storage=Memory(),
        client_id=client_id,
        assertion_provider=params.create_assertion_provider(),
        issuer=broker,
    )


async def show_refusal(response):
    """Prints the gate's answer when it is a refusal (never a token: those go to the broker)."""
    if response.status_code >= 400 and response.url.path.startswith("/mcp"):
        await response.aread()
        print(f"  gate answered {response.status_code}: {response.text[:300]}")


async def pending(http, operator):
    r = await http.get(f"{broker}/v1/approvals?status=pending", headers={"authorization": f"Bearer {operator}"})
    r.raise_for_status()
    return r.json()["approvals"]


async def main():
    operator = open(operator_token_file, encoding="utf-8").read().strip()
    async with httpx2.AsyncClient(timeout=20) as plain:
        before = {a["approval_id"] for a in await pending(plain, operator)}
        headers = {}
        if mode == "bearer":
            headers["authorization"] = "Bearer " + open(credential_file, encoding="utf-8").read().strip()
        async with httpx2.AsyncClient(
            auth=auth(), headers=headers, timeout=20, event_hooks={"response": [show_refusal]}
        ) as http:
            async with streamable_http_client(mcp_url, http_client=http) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    names = {t.name for t in (await s.list_tools()).tools}
                    check(names == {"read_workspace", "write_secret"}, f"tools/list passes through: {sorted(names)}")
                    new = [a for a in await pending(plain, operator) if a["approval_id"] not in before]
                    check(new == [], "connecting and listing created no approval")

                    r = await s.call_tool("read_workspace", {"workspace": "ws-1"})
                    check(not r.is_error and "workspace ws-1" in r.content[0].text, "an ungated tool runs")

                    args = {"workspace": "ws-1", "key": f"OPENAI_KEY_{mode}", "value": "sk-live-not-a-real-one"}
                    r = await s.call_tool("write_secret", args)
                    sc = r.structured_content or {}
                    check(r.is_error and sc.get("status") == "pending", "a gated tool call is held for approval")
                    approval = sc["approval_id"]
                    check(ran("write_secret") == [] or all(c["key"] != args["key"] for c in ran("write_secret")),
                          "the held call did not run")
                    again = await s.call_tool("write_secret", args)
                    check((again.structured_content or {}).get("approval_id") == approval,
                          "the same call while pending is the same approval")
                    new = [a for a in await pending(plain, operator) if a["approval_id"] not in before]
                    check([a["approval_id"] for a in new] == [approval], "exactly one approval is pending")
                    check(new[0]["action"] == "secret_write"
                          and new[0]["resource"] == f"workspaces/ws-1/secrets/{args['key']}", "for the tool's action and resource")
                    check("sk-live" not in json.dumps(new[0]), "the secret value is not in the approval")

                    other = dict(args, key="SOMETHING_ELSE")
                    r = await s.call_tool("write_secret", other)
                    check(r.is_error and (r.structured_content or {}).get("approval_id") != approval,
                          "other arguments are another approval, not this one")

                    d = await plain.post(f"{broker}/v1/approvals/{approval}/decision",
                                         headers={"authorization": f"Bearer {operator}"}, json={"decision": "approve"})
                    check(d.status_code == 200, f"an operator approves ({d.status_code})")

                    r = await s.call_tool("write_secret", args)
                    check(not r.is_error and f"wrote {args['key']}" in r.content[0].text, "once approved, the call runs")
                    mine = [c for c in ran("write_secret") if c["key"] == args["key"]]
                    check(len(mine) == 1, f"it ran exactly once ({len(mine)})")
                    r = await s.call_tool("write_secret", args)
                    sc = r.structured_content or {}
                    check(r.is_error and sc.get("status") == "pending" and sc.get("approval_id") != approval,
                          "the same call after that needs a new approval")
                    check(len([c for c in ran("write_secret") if c["key"] == args["key"]]) == 1, "and did not run again")
                    check(all(c["key"] != "SOMETHING_ELSE" for c in ran("write_secret")), "the unapproved call never ran")

                    if mode == "bearer":
                        await denial(s, plain, operator)
                    try:
                        r = await s.call_tool("drop_database", {})
                        refused = r.is_error
                    except MCPError:
                        refused = True
                    check(refused, "an unlisted tool is refused")
        if mode == "bearer":
            await refusals(plain, headers["authorization"])
    check(all(c.get("key") != "DENIED" for c in ran("write_secret")), "the denied call never ran")
    check(ran("drop_database") == [], "the unlisted tool was never forwarded")
    print(f"mcp interop ({mode}): passed")


async def denial(s, plain, operator):
    args = {"workspace": "ws-2", "key": "DENIED", "value": "v"}
    r = await s.call_tool("write_secret", args)
    approval = (r.structured_content or {}).get("approval_id")
    check(r.is_error and approval, "a second gated call is held")
    d = await plain.post(f"{broker}/v1/approvals/{approval}/decision",
                         headers={"authorization": f"Bearer {operator}"}, json={"decision": "deny"})
    check(d.status_code == 200, "an operator denies it")
    r = await s.call_tool("write_secret", args)
    sc = r.structured_content or {}
    check(r.is_error and sc.get("status") == "denied" and sc.get("approval_id") == approval,
          "the next identical call is told it was denied")
    r = await s.call_tool("write_secret", args)
    sc = r.structured_content or {}
    check(r.is_error and sc.get("status") == "pending" and sc.get("approval_id") != approval,
          "and the one after asks anew")


async def refusals(plain, authorization):
    """What no SDK sends but an attacker can: each refused before anything is forwarded."""
    h = {"authorization": authorization, "content-type": "application/json",
         "accept": "application/json, text/event-stream"}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "read_workspace", "arguments": {"workspace": "ws-9"}}}
    before = len(ran("read_workspace"))
    r = await plain.post(mcp_url, headers=h, json=[call])
    check(r.status_code == 400 and r.json().get("error") == "invalid_request", f"a batch is 400 ({r.status_code})")
    dup = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_workspace","name":"write_secret","arguments":{"workspace":"ws-9"}}}'
    r = await plain.post(mcp_url, headers=h, content=dup)
    check(r.status_code == 400, f"a duplicated name is 400 ({r.status_code})")
    r = await plain.post(mcp_url, headers=dict(h, **{"mcp-name": "write_secret"}), json=call)
    check(r.status_code == 400, f"an Mcp-Name that disagrees with the body is 400 ({r.status_code})")
    check(len(ran("read_workspace")) == before, "none of them reached the upstream")
    t = await plain.post(f"{broker}/oauth/token", auth=(client_id_for_scope_check, secret_for_scope_check),
                         data={"grant_type": "client_credentials", "scope": "workspaces:read", "resource": mcp_url})
    check(t.status_code == 200, "a token without mcp:use is issued for the endpoint")
    r = await plain.post(mcp_url, headers=dict(h, authorization="Bearer " + t.json()["access_token"]), json=call)
    challenge = r.headers.get("www-authenticate", "")
    check(r.status_code == 403 and 'error="insufficient_scope"' in challenge and 'scope="mcp:use"' in challenge,
          f"a token lacking mcp:use is 403 insufficient_scope ({r.status_code} {challenge})")
    check(len(ran("read_workspace")) == before, "and did not reach the upstream")


def explain(e):
    """The JSON-RPC error inside an SDK exception group, for the log."""
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            explain(sub)
    elif isinstance(e, MCPError):
        print(f"FAIL ({mode}): JSON-RPC error {e.code}: {e.message} {e.data!r}")


try:
    asyncio.run(main())
except BaseException as e:
    explain(e)
    raise
