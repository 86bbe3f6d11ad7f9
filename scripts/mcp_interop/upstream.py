"""An MCP server written with the official MCP Python SDK and nothing of Tessera: two tools,
and a log (one JSON line per call it executed) for the interop client to check what ran.

Usage: upstream.py PORT LOG_FILE   (LOG_FILE "-": record nothing, as the benchmark runs it)
"""

import json
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

port, log = int(sys.argv[1]), sys.argv[2]
app = MCPServer("interop-upstream")


def record(name: str, arguments: dict) -> None:
    if log == "-":
        return
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps({"name": name, "arguments": arguments}) + "\n")


@app.tool()
def read_workspace(workspace: str) -> str:
    """Reads a workspace (ungated)."""
    record("read_workspace", {"workspace": workspace})
    return f"workspace {workspace}"


@app.tool()
def write_secret(workspace: str, key: str, value: str) -> str:
    """Writes a secret (gated at the proxy: runs only once an operator approved)."""
    # The value is a secret: it is logged only as its length.
    record("write_secret", {"workspace": workspace, "key": key, "value_len": len(value)})
    return f"wrote {key} in {workspace}"


app.run(
    "streamable-http",
    host="127.0.0.1",
    port=port,
    streamable_http_path="/mcp",
    json_response=True,
    stateless_http=True,
    # Clients reach this server only through the gate on loopback.
    transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
)
