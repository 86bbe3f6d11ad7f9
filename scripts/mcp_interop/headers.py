"""Sends, through `tessera gate` to the WSGI upstream, the look-alike identity headers and the
method overrides a WSGI app would honour, with Python's own http.client (which sends header
names as given), and checks what the app saw.

Usage: headers.py GATE_HOST GATE_PORT TOKEN_FILE AGENT_ID UPSTREAM_LOG
"""

import http.client
import json
import sys

host, port, token_file, agent_id, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
token = open(token_file, encoding="utf-8").read().strip()


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL (wsgi): {what}")
    print(f"  ok (wsgi): {what}")


c = http.client.HTTPConnection(host, port, timeout=10)
c.putrequest("POST", "/notes")
for name, value in [
    ("Authorization", f"Bearer {token}"),
    ("Content-Type", "application/json"),
    ("Content-Length", "2"),
    ("Tessera_Subject", "tc_OPERATOR"),
    ("Tessera_Caller_Kind", "operator"),
    ("Tessera_Tenant", "other-org"),
    ("Tessera_Approval_Id", "ap_forged"),
    ("tessera-caller-kind", "operator"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X_HTTP_Method_Override", "DELETE"),
]:
    c.putheader(name, value)
c.endheaders(b"{}")
r = c.getresponse()
r.read()
check(r.status == 200, f"the ungated POST went through ({r.status})")

seen = [json.loads(line) for line in open(log, encoding="utf-8") if line.strip()]
check(len(seen) == 1, "the upstream saw one request")
h, method = seen[0]["headers"], seen[0]["method"]
check(method == "POST", "as a POST")
check(h.get("HTTP_TESSERA_CALLER_KIND") == "agent", f"HTTP_TESSERA_CALLER_KIND is the token's kind alone: {h.get('HTTP_TESSERA_CALLER_KIND')!r}")
check(h.get("HTTP_TESSERA_SUBJECT") == agent_id, "HTTP_TESSERA_SUBJECT is the token's subject alone")
check(h.get("HTTP_TESSERA_TENANT") == "org-1", "HTTP_TESSERA_TENANT is the token's tenant alone")
check("HTTP_TESSERA_APPROVAL_ID" not in h, "no approval id on an ungated request")
overrides = [k for k in h if "METHOD" in k]
check(overrides == [], f"no method override reached it: {overrides}")
check("HTTP_AUTHORIZATION" not in h, "nor the caller's Authorization")
print("wsgi headers: passed")
