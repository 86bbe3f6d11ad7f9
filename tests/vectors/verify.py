#!/usr/bin/env python3
"""An independent verifier for Tessera's shared vectors, built on PyJWT rather than on Tessera.

It applies the checks of docs/verifying.md to every case of vectors.json with the keys of
jwks.json: its own format and header pre-checks where PyJWT is lax (size, charset, segment
count, strict base64url, duplicate members, forbidden header members, exact typ, kid), PyJWT
for the Ed25519 signature and the registered claims (exp, nbf, iat, iss, aud), then its own
claim checks (integer NumericDates, lifetime cap, required claims and their types) and the
capability binding, the actor chain included. It also checks the params_digest examples with
the rfc8785 package, computes the presented form of request parameters (design §11: secret
fields as length and fingerprint, unsafe integers refused) for the presented cases, and checks
the DPoP proof cases (design §13) in order against one replay cache.

Usage: python3 tests/vectors/verify.py [FOLDER]   (default: the folder of this script)
Needs: pip install 'pyjwt>=2.10.1' cryptography rfc8785
Prints one line per case and exits 1 if any verdict differs from the expected one.
"""

import base64
import decimal
import hashlib
import json
import re
import sys
from datetime import datetime
from pathlib import Path

import jwt
import jwt.api_jwt
import rfc8785

TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
B64URL_CHARS = re.compile(r"[A-Za-z0-9_-]*")
KID_CHARS = re.compile(r"[A-Za-z0-9_-]{1,64}")
FORBIDDEN_HEADER_MEMBERS = ("crit", "jku", "jwk", "x5u", "x5c", "b64")
CALLER_KINDS = ("agent", "workspace", "operator", "install", "service")
MAX_JSON_DEPTH = 16
I64 = (-(2**63), 2**63 - 1)

# Required claims and their JSON types, per token kind ("aud" is a string or a string array).
COMMON_CLAIMS = {
    "iss": str, "sub": str, "aud": "aud", "iat": int, "nbf": int, "exp": int,
    "jti": str, "tenant": str, "caller_kind": str,
}
ACCESS_CLAIMS = {**COMMON_CLAIMS, "client_id": str, "scope": str}
CAPABILITY_CLAIMS = {
    **COMMON_CLAIMS, "action": str, "resource": str, "params_digest": str,
    "approval_id": str, "approvers": "strings", "bypass": bool,
}


class Reject(Exception):
    """The token is invalid; the message says why."""


class FrozenClock(datetime):
    """PyJWT reads the time with datetime.now(); the vectors fix it per case."""

    at = 0

    @classmethod
    def now(cls, tz=None):
        return datetime.fromtimestamp(cls.at, tz=tz)


jwt.api_jwt.datetime = FrozenClock


def b64url_decode(segment, what):
    """Canonical unpadded base64url only: no padding, no other alphabet, zero trailing bits."""
    if not B64URL_CHARS.fullmatch(segment) or len(segment) % 4 == 1:
        raise Reject(f"{what} is not base64url")
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != segment:
        raise Reject(f"{what} is not canonical base64url")
    return raw


def no_duplicates(pairs):
    obj = {}
    for name, value in pairs:
        if name in obj:
            raise Reject(f"duplicate member {name!r}")
        obj[name] = value
    return obj


def no_constant(name):
    raise Reject(f"{name} is not JSON")


def depth(value):
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def strict_object(raw, what):
    """UTF-8 JSON object, no duplicate members at any depth, bounded nesting."""
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise Reject(f"{what} is not JSON: {e}") from None
    except Reject as e:
        raise Reject(f"{what}: {e}") from None
    if not isinstance(value, dict):
        raise Reject(f"{what} is not a JSON object")
    if depth(value) > MAX_JSON_DEPTH:
        raise Reject(f"{what} is nested too deeply")
    return value


def is_int(value):
    # bool is a subclass of int in Python; JSON true is not a NumericDate.
    return type(value) is int and I64[0] <= value <= I64[1]


def check_type(claims, name, kind):
    value = claims.get(name)
    if name not in claims:
        raise Reject(f"missing claim {name}")
    ok = {
        str: lambda v: isinstance(v, str),
        int: is_int,
        bool: lambda v: isinstance(v, bool),
        "aud": lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(a, str) for a in v)),
        "strings": lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
    }[kind](value)
    if not ok:
        raise Reject(f"claim {name} has the wrong JSON type")


def check_actor(actor, level, max_depth):
    if level > max_depth:
        raise Reject("act chain too deep")
    if not isinstance(actor, dict) or not isinstance(actor.get("sub"), str):
        raise Reject("act must be an object with a string sub")
    # Design §12: every actor carries its kind, since every party counts.
    if actor.get("caller_kind") not in CALLER_KINDS:
        raise Reject("act.caller_kind must be one of the caller kinds")
    if actor.get("act") is not None:
        check_actor(actor["act"], level + 1, max_depth)


def actor_subs(actor):
    """The actors' client ids, nearest first."""
    out = []
    while actor is not None:
        out.append(actor["sub"])
        actor = actor.get("act")
    return out


def verify(case, jwks, settings):
    """Returns the verified claims, or raises Reject."""
    token, kind, now = case["token"], case["kind"], case["now"]

    # 1. Format, before any cryptography.
    if len(token.encode()) > settings["max_token_bytes"]:
        raise Reject("token too large")
    if not TOKEN_CHARS.fullmatch(token):
        raise Reject("characters outside [A-Za-z0-9_.-]")
    segments = token.split(".")
    if len(segments) != 3 or not all(segments):
        raise Reject("not three non-empty segments")
    h, p, s = segments
    header = strict_object(b64url_decode(h, "header"), "header")
    claims = strict_object(b64url_decode(p, "payload"), "claims")
    signature = b64url_decode(s, "signature")

    # 2. Header.
    for member in FORBIDDEN_HEADER_MEMBERS:
        if member in header:
            raise Reject(f"header member {member} is not accepted")
    for member in ("alg", "typ", "kid"):
        if not isinstance(header.get(member), str):
            raise Reject(f"header {member} missing or not a string")
    allowed_typ = settings["access_typ"] if kind == "access" else settings["capability_typ"]
    if header["typ"] not in allowed_typ:
        raise Reject(f"typ {header['typ']!r} is not {kind}")
    if not KID_CHARS.fullmatch(header["kid"]):
        raise Reject("kid is not a plausible key id")

    # 3. Algorithm and key: exact allowlist; the key by kid only; one algorithm per key.
    if header["alg"] not in settings["algorithms"]:
        raise Reject(f"alg {header['alg']!r} not allowed")
    matches = [k for k in jwks["keys"] if k.get("kid") == header["kid"]]
    if len(matches) != 1:
        raise Reject("unknown kid")
    jwk = matches[0]
    if (jwk.get("kty"), jwk.get("crv"), jwk.get("use"), jwk.get("alg")) != ("OKP", "Ed25519", "sig", header["alg"]):
        raise Reject("the key does not fit the header's alg")
    if len(signature) != 64:
        raise Reject("an Ed25519 signature is 64 bytes")

    # 4. Signature and registered claims, by PyJWT.
    FrozenClock.at = now
    try:
        decoded = jwt.decode(
            token,
            key=jwt.PyJWK(jwk),
            algorithms=settings["algorithms"],
            issuer=case["issuer"],
            audience=case["audience"],
            leeway=settings["leeway_secs"],
            options={"require": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"]},
        )
    except jwt.PyJWTError as e:
        raise Reject(f"PyJWT: {type(e).__name__}: {e}") from None
    if decoded != claims:
        raise Reject("PyJWT read other claims than the strict parser")

    # 5. Claims: presence and JSON types (PyJWT accepts "123" and 1.5 as NumericDates).
    required = ACCESS_CLAIMS if kind == "access" else CAPABILITY_CLAIMS
    for name, json_type in required.items():
        check_type(claims, name, json_type)
    if claims["iss"] != case["issuer"]:
        raise Reject("wrong issuer")
    aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if case["audience"] not in aud:
        raise Reject("wrong audience")
    leeway = settings["leeway_secs"]
    iat, nbf, exp = claims["iat"], claims["nbf"], claims["exp"]
    if iat > now + leeway or nbf > now + leeway:
        raise Reject("iat or nbf in the future")
    if exp <= iat or exp - iat > settings["max_lifetime_secs"]:
        raise Reject("lifetime out of bounds")
    if now >= exp + leeway:
        raise Reject("expired")
    if not claims["sub"] or not claims["jti"] or not claims["tenant"]:
        raise Reject("sub, jti and tenant must not be empty")
    if claims["caller_kind"] not in CALLER_KINDS:
        raise Reject("unknown caller_kind")

    # 6. Type-specific.
    if kind == "access":
        if claims["client_id"] != claims["sub"]:
            raise Reject("client_id is not sub")
        if claims.get("workspace") is not None and not isinstance(claims["workspace"], str):
            raise Reject("workspace must be a string")
        if claims.get("act") is not None:
            check_actor(claims["act"], 1, settings["max_act_depth"])
    else:
        if claims["bypass"] != (len(claims["approvers"]) == 0):
            raise Reject("approvers must be empty exactly when bypass is true")
        if claims.get("act") is not None:
            check_actor(claims["act"], 1, settings["max_act_depth"])

        # 7. Binding to the request and the caller.
        b = case.get("binding")
        if b is not None:
            for claim, wanted in (
                ("action", b["action"]),
                ("resource", b["resource"]),
                ("params_digest", b["params_digest"]),
                ("sub", b["caller_sub"]),
                ("tenant", b["caller_tenant"]),
            ):
                if claims[claim] != wanted:
                    raise Reject(f"binding: capability {claim} does not match the request")
            # A capability serves only the chain of actors that asked for it.
            if actor_subs(claims.get("act")) != b.get("caller_actors", []):
                raise Reject("binding: capability act does not match the caller's actors")
    return claims


def params_digest(params_json):
    canonical = rfc8785.dumps(json.loads(params_json))
    digest = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).decode().rstrip("=")
    return canonical.decode("utf-8"), "sha256:" + digest


MAX_SAFE_INTEGER = 2**53 - 1


class Unsafe(Exception):
    """The parameters have no presented form."""


def strict_number(text):
    """Parses JSON numbers as design §11 asks: integer literals within ±(2^53 - 1); any other
    number finite, within ±(2^53 - 1), and exactly the double it becomes."""
    if re.fullmatch(r"-?[0-9]+", text):
        n = int(text)
        if abs(n) > MAX_SAFE_INTEGER:
            raise Unsafe(f"integer {text} is outside ±(2^53 - 1)")
        return n
    f = float(text)
    if f != f or f in (float("inf"), float("-inf")):
        raise Unsafe(f"number {text} is not finite")
    if abs(f) > MAX_SAFE_INTEGER:
        raise Unsafe(f"number {text} is outside ±(2^53 - 1)")
    if decimal.Decimal(text) != decimal.Decimal(repr(f)):
        raise Unsafe(f"number {text} is not exactly a double")
    return f


def has_mark(value):
    if isinstance(value, dict):
        return any(k == "$secret" or has_mark(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_mark(v) for v in value)
    return False


def presented(params_json, secret_fields):
    """The presented form of a request body, or Unsafe."""
    params = json.loads(params_json, parse_int=strict_number, parse_float=strict_number,
                        parse_constant=lambda c: (_ for _ in ()).throw(Unsafe(c)))
    if not isinstance(params, dict):
        raise Unsafe("not an object")
    if has_mark(params):
        raise Unsafe("a member named $secret")
    out = {}
    for name, value in params.items():
        if name in secret_fields:
            if not isinstance(value, str):
                raise Unsafe(f"secret field {name} is not a string")
            raw = value.encode("utf-8")
            fp = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
            out[name] = {"$secret": {"length": len(raw), "sha256": "sha256:" + fp}}
        else:
            out[name] = value
    return out


DPOP_ALGS = ("EdDSA", "ES256")
DPOP_WINDOW_SECS = 60
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def b64url(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwk_thumbprint(jwk):
    """RFC 7638: SHA-256 over the required members, sorted, no whitespace."""
    required = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y")}.get(jwk.get("kty"))
    if required is None or any(not isinstance(jwk.get(m), str) for m in required):
        raise Reject("jwk is not an OKP or EC public key")
    canonical = json.dumps({m: jwk[m] for m in required}, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())


def normalized_url(url):
    """What htu is compared on (RFC 9449 §4.3): scheme, host, port and path."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise Reject("htu is not an http(s) URL")
    port = u.port or {"http": 80, "https": 443}[u.scheme]
    return f"{u.scheme}://{u.hostname.lower()}:{port}{u.path or '/'}"


def verify_dpop(case, seen):
    """The checks of design §13 on one proof; `seen` is the replay cache of (jkt, jti)."""
    proof = case["proof"]
    if not TOKEN_CHARS.fullmatch(proof) or proof.count(".") != 2:
        raise Reject("not a compact JWS")
    h, p, _ = proof.split(".")
    header = strict_object(b64url_decode(h, "header"), "header")
    if header.get("typ") != "dpop+jwt":
        raise Reject("typ is not dpop+jwt")
    if header.get("alg") not in DPOP_ALGS:
        raise Reject(f"alg {header.get('alg')!r} is not accepted")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise Reject("jwk is required")
    if any(m in jwk for m in PRIVATE_JWK_MEMBERS):
        raise Reject("the jwk carries private key members")
    jkt = jwk_thumbprint(jwk)
    try:
        key = jwt.PyJWK(jwk, algorithm=header["alg"])
        claims = jwt.decode(proof, key, algorithms=[header["alg"]], options={"verify_aud": False, "verify_iat": False})
    except jwt.PyJWTError as e:
        raise Reject(f"PyJWT: {e}") from e
    strict_object(b64url_decode(p, "claims"), "claims")
    for name in ("jti", "htm", "htu"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise Reject(f"{name} is required")
    if not is_int(claims.get("iat")):
        raise Reject("iat must be an integer")
    if jkt != case["jkt"]:
        raise Reject("signed by another key than the token is bound to")
    if claims["htm"] != case["method"]:
        raise Reject("htm names another method")
    if normalized_url(claims["htu"]) != normalized_url(case["url"]):
        raise Reject("htu names another URL")
    if abs(claims["iat"] - case["now"]) > DPOP_WINDOW_SECS:
        raise Reject("iat is outside the window")
    token = case.get("access_token")
    if token is not None and claims.get("ath") != b64url(hashlib.sha256(token.encode()).digest()):
        raise Reject("ath is not the hash of the access token")
    if (jkt, claims["jti"]) in seen:
        raise Reject("replayed jti")
    seen.add((jkt, claims["jti"]))


def self_test():
    """Fails loudly if PyJWT stops reading the time through the patched clock."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    token = jwt.encode({"exp": 1000}, key, algorithm="EdDSA")
    FrozenClock.at = 900
    jwt.decode(token, key.public_key(), algorithms=["EdDSA"])


def main():
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    jwks = json.loads((folder / "jwks.json").read_text(encoding="utf-8"))
    vectors = json.loads((folder / "vectors.json").read_text(encoding="utf-8"))
    settings = vectors["settings"]
    self_test()

    passed = failed = 0
    for d in vectors["digests"]:
        canonical, digest = params_digest(d["params_json"])
        ok = (canonical, digest) == (d["canonical"], d["params_digest"])
        passed, failed = passed + ok, failed + (not ok)
        print(f"{'ok  ' if ok else 'FAIL'} digest {d['name']}: {digest}" + ("" if ok else f" (want {d['params_digest']})"))

    for p in vectors["presented"]:
        try:
            shown = presented(p["params_json"], p["secret_fields"])
            canonical = rfc8785.dumps(shown)
            digest = "sha256:" + base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).decode().rstrip("=")
            got = (False, canonical.decode("utf-8"), digest)
        except Unsafe:
            got = (True, None, None)
        want = (p["refused"], p.get("presented_canonical"), p.get("params_digest"))
        ok = got == want
        passed, failed = passed + ok, failed + (not ok)
        print(f"{'ok  ' if ok else 'FAIL'} presented {p['name']}: " + ("refused" if got[0] else got[2])
              + ("" if ok else f" (want {want})"))

    seen = set()
    for case in vectors.get("dpop", []):
        try:
            verify_dpop(case, seen)
            got, why = "valid", ""
        except Reject as e:
            got, why = "invalid", str(e)
        ok = got == case["expected"]
        passed, failed = passed + ok, failed + (not ok)
        print(f"{'ok  ' if ok else 'FAIL'} {case['name']}: expected {case['expected']}, got {got}"
              + (f" ({why})" if why else ""))

    for case in vectors["cases"]:
        try:
            verify(case, jwks, settings)
            got, why = "valid", ""
        except Reject as e:
            got, why = "invalid", str(e)
        ok = got == case["expected"]
        passed, failed = passed + ok, failed + (not ok)
        mark = "ok  " if ok else "FAIL"
        print(f"{mark} {case['name']}: expected {case['expected']}, got {got}" + (f" ({why})" if why else ""))

    print(f"vectors: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
