"""Authentication before the upgrade (HTTP 401 + JSON) and the token's life while connected."""

from __future__ import annotations

import base64
import fnmatch
import gc
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from services.auth import _CLAIMS, Identity, RoomClaim, TokenVerifier
from services.auth import main as auth_main
from services.errors import AuthError
from tests.helpers import SECRET, Client, refused_status, token
from tests.helpers import test_settings as settings_for

T = 15


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _now() -> int:
    return int(time.time())


BAD_TOKENS = {
    "missing": None,
    "empty": "",
    "garbage": "not-a-jwt",
    "two-parts": "abc.def",
    "wrong-secret": jwt.encode({"sub": "a", "exp": _now() + 600}, "another-secret-that-is-long-enough-000000"),
    "expired": jwt.encode({"sub": "a", "exp": _now() - 60}, SECRET),
    "not-yet-valid": jwt.encode({"sub": "a", "exp": _now() + 600, "nbf": _now() + 600}, SECRET),
    "no-exp": jwt.encode({"sub": "a"}, SECRET),
    "alg-none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'a', 'exp': _now() + 600})}.",
    "alg-outside-list": jwt.encode({"sub": "a", "exp": _now() + 600}, SECRET, algorithm="HS512"),
    "no-subject": jwt.encode({"exp": _now() + 600}, SECRET),
    "bad-rooms-claim": jwt.encode({"sub": "a", "exp": _now() + 600, "rooms": 5}, SECRET),
}


@pytest.mark.gen_test(timeout=T)
@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_refused_with_401_json(gw, case):
    tok = BAD_TOKENS[case]
    url = gw.url if tok is None else f"{gw.url}?token={tok}"
    status, body = await refused_status(url)
    assert status == 401
    assert isinstance(body.get("error"), str) and body["error"]
    if tok:
        assert tok not in body["error"]


@pytest.mark.gen_test(timeout=T)
async def test_expired_within_leeway_is_accepted(make_gateway):
    gw = await make_gateway(jwt_leeway=30)
    tok = jwt.encode({"sub": "late", "exp": _now() - 5}, SECRET)
    client = await Client.connect(gw.url, tok)
    client.send("ping")
    await client.expect("pong")


@pytest.mark.gen_test(timeout=T)
async def test_bearer_header_and_userid_fallback(gw):
    tok = jwt.encode({"userId": "u-42", "exp": _now() + 600}, SECRET)
    client = await Client.connect(gw.url, headers={"Authorization": f"Bearer {tok}"})
    state = await client.join("r")
    assert state["payload"]["members"][0]["userId"] == "u-42"
    status, _ = await refused_status(gw.url, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert status == 401


@pytest.mark.gen_test(timeout=T)
async def test_audience_and_issuer_are_checked(make_gateway):
    gw = await make_gateway(jwt_audience="chat", jwt_issuer="https://auth.example")
    good = token("a", aud="chat", iss="https://auth.example")
    client = await Client.connect(gw.url, good)
    client.send("ping")
    await client.expect("pong")
    for bad in (
        token("a", aud="other", iss="https://auth.example"),
        token("a", aud="chat", iss="evil"),
        token("a"),
    ):
        status, _ = await refused_status(f"{gw.url}?token={bad}")
        assert status == 401


@pytest.mark.gen_test(timeout=T)
@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_asymmetric_tokens(make_gateway, alg):
    key = rsa.generate_private_key(65537, 2048) if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    gw = await make_gateway(jwt_algorithms=(alg,), jwt_public_key=public, jwt_secret=None)
    tok = jwt.encode({"sub": "bot", "exp": _now() + 600}, key, algorithm=alg)
    client = await Client.connect(gw.url, tok)
    client.send("ping")
    await client.expect("pong")
    # Algorithm confusion: an HS256 token signed with the public key text must not pass.
    forged = jwt.encode({"sub": "bot", "exp": _now() + 600}, "x" * 40, algorithm="HS256")
    status, _ = await refused_status(f"{gw.url}?token={forged}")
    assert status == 401


@pytest.mark.gen_test(timeout=T)
async def test_token_expiry_while_connected_closes_4001(make_gateway):
    gw = await make_gateway(jwt_leeway=0)
    client = await Client.connect(gw.url, token("brief", ttl=2))
    await client.join("r")
    started = time.monotonic()
    code = await client.wait_closed(timeout=8)
    assert code == 4001
    assert time.monotonic() - started < 6


@pytest.mark.gen_test(timeout=T)
async def test_origin_allowlist(make_gateway):
    gw = await make_gateway(allowed_origins=("https://chat.example",))
    ok = await Client.connect(gw.url, token("a"), headers={"Origin": "https://chat.example"})
    ok.send("ping")
    await ok.expect("pong")
    status, _ = await refused_status(f"{gw.url}?token={token('a')}", headers={"Origin": "https://evil.example"})
    assert status == 403
    no_origin = await Client.connect(gw.url, token("bot"))  # not a browser: not subject to the list
    no_origin.send("ping")
    await no_origin.expect("pong")


def test_mint_cli_makes_a_token_the_gateway_accepts(capsys, monkeypatch):
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.setenv("JWT_DEV", SECRET)  # the seed's name still works
    assert auth_main(["mint", "--sub", "alice", "--rooms", "general,team-*", "--ttl", "60"]) == 0
    tok = capsys.readouterr().out.strip()
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["rooms"] == ["general", "team-*"]
    assert 55 <= claims["exp"] - time.time() <= 61


def test_mint_cli_without_secret_fails(capsys, monkeypatch):
    monkeypatch.delenv("JWT_DEV", raising=False)
    monkeypatch.delenv("JWT_SECRET", raising=False)
    assert auth_main(["mint", "--sub", "a"]) == 2
    assert "JWT_SECRET" in capsys.readouterr().err


def test_mint_cli_refuses_a_secret_the_gateway_would_refuse(capsys, monkeypatch):
    """A 3-byte secret signs tokens that a gateway without --dev never accepts: say so instead."""
    monkeypatch.setenv("JWT_SECRET", "abc")
    assert auth_main(["mint", "--sub", "a"]) == 2
    assert "shorter than 32 bytes" in capsys.readouterr().err
    assert auth_main(["mint", "--sub", "a", "--dev"]) == 0
    assert jwt.decode(capsys.readouterr().out.strip(), "abc", algorithms=["HS256"])["sub"] == "a"


def _raw_token(header: str, claims: str, secret: str | None = SECRET) -> str:
    """A token from raw JSON texts, signed when `secret` is given: JSON the encoder would not write."""
    import hashlib
    import hmac

    def b64(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()

    signing_input = f"{b64(header)}.{b64(claims)}"
    if secret is None:
        return f"{signing_input}.AAAA"
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


DEEP = "[" * 5000 + "]" * 5000
HS = '{"alg":"HS256","typ":"JWT"}'
HOSTILE_TOKENS = {
    "nested-header": _raw_token('{"alg":"HS256","x":' + DEEP + "}", "{}", secret=None),
    "nested-claims": _raw_token(HS, '{"sub":"a","exp":9999999999,"x":' + DEEP + "}"),
    "exp-infinity": _raw_token(HS, '{"sub":"a","exp":Infinity}'),
    "exp-nan": _raw_token(HS, '{"sub":"a","exp":NaN}'),
    "iat-infinity": _raw_token(HS, '{"sub":"a","exp":9999999999,"iat":Infinity}'),
    "nbf-minus-infinity": _raw_token(HS, '{"sub":"a","exp":9999999999,"nbf":-Infinity}'),
    "exp-huge-int": _raw_token(HS, '{"sub":"a","exp":' + "9" * 400 + "}"),
    "exp-string": _raw_token(HS, '{"sub":"a","exp":"tomorrow"}'),
    "exp-bool": _raw_token(HS, '{"sub":"a","exp":true}'),
    "sub-object": _raw_token(HS, '{"sub":{"id":1},"exp":9999999999}'),
    "claims-a-list": _raw_token(HS, "[1,2,3]"),
    "header-a-list": _raw_token("[1]", '{"sub":"a","exp":9999999999}', secret=None),
    "alg-a-list": _raw_token('{"alg":["HS256"]}', '{"sub":"a","exp":9999999999}', secret=None),
    "rooms-of-numbers": _raw_token(HS, '{"sub":"a","exp":9999999999,"rooms":[1,2]}'),
    "oversized": _raw_token(HS, '{"sub":"a","exp":9999999999,"pad":"' + "x" * 20000 + '"}'),
    "not-base64": "%%%.%%%.%%%",
    "non-ascii": "ä.ö.ü",
}


@pytest.mark.gen_test(timeout=T)
@pytest.mark.parametrize("case", sorted(HOSTILE_TOKENS))
@pytest.mark.parametrize("where", ["query", "bearer"])
async def test_hostile_tokens_are_401_json_never_500(gw, caplog, case, where):
    """Whatever is wrong with a token (nesting, NaN/Infinity, size, types), it is a 401 with a JSON
    body and no traceback in the log: no token is needed to reach this code."""
    from urllib.parse import quote

    tok = HOSTILE_TOKENS[case]
    if where == "query":
        status, body = await refused_status(f"{gw.url}?token={quote(tok)}")
    else:
        status, body = await refused_status(gw.url, headers={"Authorization": f"Bearer {tok}"})
    assert status == 401, body
    assert isinstance(body.get("error"), str) and body["error"]
    assert not [r for r in caplog.records if r.levelno >= 40 or r.exc_info], "no error or traceback logged"
    client = await Client.connect(gw.url, token("after"))  # the server is fine afterwards
    client.send("ping")
    await client.expect("pong")


_ROOM = st.text(alphabet="ab-*?[]", min_size=0, max_size=6)


@given(st.lists(_ROOM, max_size=6), st.text(alphabet="ab-", min_size=1, max_size=6))
def test_a_room_claim_allows_exactly_what_its_globs_match(patterns: list[str], room: str) -> None:
    """RoomClaim sorts a claim into ids, prefixes and other globs; it must agree with fnmatch."""
    assert RoomClaim(patterns).allows(room) == any(fnmatch.fnmatchcase(room, p) for p in patterns)


def test_identities_with_one_claim_share_its_matcher_while_they_live() -> None:
    """A user's sockets carry the same claim: one matcher for all of them, gone with the last."""
    claim = tuple(f"team-{n}-*" for n in range(500))
    first, second = Identity("u", 1e9, claim), Identity("u", 1e9, tuple(list(claim)))
    assert first.may_join("team-7-x") and second.may_join("team-7-x") and not first.may_join("team-x")
    assert first._claim is second._claim and claim in _CLAIMS
    del first, second
    gc.collect()
    assert claim not in _CLAIMS


# -- verified tokens remembered (a reconnect storm presents the same tokens again) -------------


def _verifier(**overrides: object) -> TokenVerifier:
    return TokenVerifier(settings_for(**overrides))


def test_a_verified_token_is_remembered_and_the_memory_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(TokenVerifier, "VERIFIED_TOKENS", 3)
    verifier = _verifier()
    tokens = [token(f"u{i}") for i in range(5)]
    first = verifier.verify(tokens[0])
    assert verifier.verify(tokens[0]) is first  # remembered: the same identity, no second decode
    for tok in tokens[1:]:
        verifier.verify(tok)
    assert list(verifier._verified) == tokens[2:]  # the least recently used went first
    verifier.verify(tokens[2])
    assert list(verifier._verified) == [tokens[3], tokens[4], tokens[2]]
    long = token("u-long", pad="x" * TokenVerifier.VERIFIED_TOKEN_BYTES)
    assert verifier.verify(long).user_id == "u-long"
    assert long not in verifier._verified  # too long to keep: bounded in bytes, not only in count


def test_a_remembered_token_is_checked_again_once_it_expires(monkeypatch) -> None:
    verifier = _verifier(jwt_leeway=0)
    decoded: list[str] = []
    real = verifier._verify

    def counting(tok: str) -> Identity:
        decoded.append(tok)
        return real(tok)

    monkeypatch.setattr(verifier, "_verify", counting)
    tok = token("alice", ttl=60)
    verifier.verify(tok)
    verifier.verify(tok)
    assert len(decoded) == 1
    later = time.time() + 61
    monkeypatch.setattr("services.auth.time.time", lambda: later)
    verifier.verify(tok)  # past its exp for the cache: decoded again (PyJWT's own clock decides)
    assert len(decoded) == 2


def test_refused_tokens_are_not_remembered() -> None:
    verifier = _verifier()
    for case in ("wrong-secret", "expired", "not-yet-valid"):
        bad = BAD_TOKENS[case]
        assert bad is not None
        with pytest.raises(AuthError):
            verifier.verify(bad)
    assert not verifier._verified
