"""JWT-SVID validation rules (SPIFFE JWT-SVID spec) and JWT bundles, with real keys and real signatures.

Every refusal is asserted by its reason; none may echo the token. The
end-to-end tests over mTLS and a real Workload API are in test_jwt_calls.py.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meshnode.authz.jwt import NOT_BEARER, JwtAuthn, bearer_token
from meshnode.devagent.ca import DevCA
from meshnode.devagent.jwtsvids import DevJwt
from meshnode.errors import InvalidBundleError, JwtSvidError
from meshnode.jwtsvid import JwtRejection, JwtSvid, JwtValidator, StaticJwtBundles, Token, parse_jwks
from meshnode.jwtsvid.bundle import merge_bundles, parse_spiffe_jwt_bundle
from meshnode.spiffeid import parse_spiffe_id
from tests.support.jwt import (
    ALPHA,
    BETA,
    bundle,
    claims,
    ec_key,
    forge,
    jwk,
    rsa_key,
    tampered,
    unsigned,
    with_payload,
)

KEY = ec_key()
OTHER_KEY = ec_key()


def validator(*bundles: object, audiences: tuple[str, ...] = (BETA,), tds: tuple[str, ...] = ("example.org",),
              clock: object = time.time) -> JwtValidator:
    source = StaticJwtBundles({b.trust_domain: b for b in bundles})  # type: ignore[attr-defined]
    return JwtValidator(source, audiences=audiences, trust_domains=tds, clock=clock)  # type: ignore[arg-type]


def refused(v: JwtValidator, token: str) -> str:
    result = v.check(token)
    assert isinstance(result, JwtRejection), result
    parts = token.split(".")
    if len(parts) == 3 and len(parts[2]) > 8:  # a real signature never reaches a message
        assert parts[2] not in result.reason and parts[1] not in result.reason
    return result.reason


def test_a_valid_token_gives_subject_audience_expiry_and_claims() -> None:
    v = validator(bundle("example.org", k1=KEY))
    payload = claims(aud=[BETA, "other"], team="payments")
    result = v.check(forge(KEY, payload))
    assert isinstance(result, JwtSvid)
    assert result.subject == parse_spiffe_id(ALPHA)
    assert result.audience == (BETA, "other")
    assert int(result.expiry.timestamp()) == payload["exp"]
    assert result.claims["team"] == "payments" and result.key_id == "k1"


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_every_rsa_algorithm_of_the_spec_is_accepted(alg: str) -> None:
    key = rsa_key()
    assert isinstance(validator(bundle("example.org", r1=key)).check(forge(key, claims(), alg=alg, kid="r1")), JwtSvid)


@pytest.mark.parametrize(("alg", "curve"), [("ES256", ec.SECP256R1()), ("ES384", ec.SECP384R1()),
                                            ("ES512", ec.SECP521R1())])
def test_every_ec_algorithm_of_the_spec_is_accepted(alg: str, curve: ec.EllipticCurve) -> None:
    key = ec_key(curve)
    assert isinstance(validator(bundle("example.org", e1=key)).check(forge(key, claims(), alg=alg, kid="e1")), JwtSvid)


def test_alg_none_is_refused() -> None:
    assert "not signed" in refused(validator(bundle("example.org", k1=KEY)), unsigned(claims()))


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_keyed_with_anything_is_refused(alg: str) -> None:
    # the classic confusion: the verifier's public key used as the HMAC secret
    secret = json.dumps(jwk(KEY, "k1")).encode() * 2
    reason = refused(validator(bundle("example.org", k1=KEY)), forge(secret, claims(), alg=alg))
    assert f'alg "{alg}" is not allowed' in reason


def test_an_rsa_key_never_verifies_an_es256_token_and_curves_must_match() -> None:
    rsa = rsa_key()
    v = validator(bundle("example.org", k1=rsa))
    assert "is not a secp256r1 EC key" in refused(v, forge(KEY, claims()))
    p384 = ec_key(ec.SECP384R1())
    v = validator(bundle("example.org", k1=p384))
    assert "is not a secp256r1 EC key" in refused(v, forge(KEY, claims()))
    v = validator(bundle("example.org", k1=KEY))
    assert "is not an RSA key" in refused(v, forge(rsa, claims(), alg="RS256"))


def test_expired_and_not_yet_valid_tokens_are_refused_with_30_s_of_skew() -> None:
    v = validator(bundle("example.org", k1=KEY))
    assert "expired at" in refused(v, forge(KEY, claims(ttl=-60)))
    assert isinstance(v.check(forge(KEY, claims(ttl=-10))), JwtSvid)  # within the skew allowed
    now = int(time.time())
    assert "not valid before" in refused(v, forge(KEY, {**claims(), "nbf": now + 120}))
    assert "issued in the future" in refused(v, forge(KEY, {**claims(), "iat": now + 120}))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"aud": BETA, "exp": 2**40}, "no sub claim"),
        ({"sub": "spiffe://example.org/a/../b", "aud": BETA, "exp": 2**40}, "is not a SPIFFE ID"),
        ({"sub": "alpha", "aud": BETA, "exp": 2**40}, "is not a SPIFFE ID"),
        ({"sub": ALPHA, "exp": 2**40}, "no aud claim"),
        ({"sub": ALPHA, "aud": [], "exp": 2**40}, "claim aud is not"),
        ({"sub": ALPHA, "aud": [BETA, 7], "exp": 2**40}, "claim aud is not"),
        ({"sub": ALPHA, "aud": BETA}, "no exp claim"),
        ({"sub": ALPHA, "aud": BETA, "exp": "tomorrow"}, "claim exp is not a number"),
        ({"sub": ALPHA, "aud": BETA, "exp": True}, "claim exp is not a number"),
    ],
)
def test_claims_the_spec_requires(payload: dict[str, object], reason: str) -> None:
    assert reason in refused(validator(bundle("example.org", k1=KEY)), forge(KEY, payload))


def test_the_audience_must_name_this_server() -> None:
    v = validator(bundle("example.org", k1=KEY), audiences=(BETA, "reports"))
    assert "names none of this server's audiences" in refused(v, forge(KEY, claims(aud="spiffe://example.org/x")))
    assert isinstance(v.check(forge(KEY, claims(aud=["x", "reports"]))), JwtSvid)


def test_the_key_comes_from_the_bundle_of_the_subjects_trust_domain() -> None:
    partner = ec_key()
    v = validator(bundle("example.org", k1=KEY), bundle("partner.org", p1=partner), tds=("example.org", "partner.org"))
    # partner.org's key signs a token for an example.org subject: not a key of the issuer's trust domain
    assert "key id \"p1\" is not in the JWT bundle of 'example.org'" in refused(v, forge(partner, claims(), kid="p1"))
    assert isinstance(v.check(forge(partner, claims(sub="spiffe://partner.org/w"), kid="p1")), JwtSvid)
    # the same kid in both bundles: only the subject's trust domain's key counts
    v = validator(bundle("example.org", k1=KEY), bundle("partner.org", k1=partner), tds=("example.org", "partner.org"))
    assert "signature does not verify with key \"k1\" of 'example.org'" in refused(v, forge(partner, claims()))


def test_subjects_of_trust_domains_not_accepted_are_refused() -> None:
    other = ec_key()
    v = validator(bundle("example.org", k1=KEY), bundle("other.org", k1=other))
    reason = refused(v, forge(other, claims(sub="spiffe://other.org/w")))
    assert "trust domain 'other.org', which this server does not accept" in reason
    v = validator(bundle("example.org", k1=KEY), tds=("example.org", "partner.org"))
    assert "no JWT bundle for trust domain 'partner.org'" in refused(v, forge(KEY, claims(sub="spiffe://partner.org/w")))


def test_unknown_kid_missing_kid_and_tampering_are_refused() -> None:
    v = validator(bundle("example.org", k1=KEY))
    assert "key id \"k9\" is not in the JWT bundle" in refused(v, forge(KEY, claims(), kid="k9"))
    assert "has no kid" in refused(v, forge(KEY, claims(), kid=None))
    good = forge(KEY, claims())
    assert "signature does not verify" in refused(v, tampered(good))
    assert "signature does not verify" in refused(v, with_payload(good, claims(sub="spiffe://example.org/admin")))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"typ": "JWE"}, 'typ "JWE" is not JWT or JOSE'),
        ({"crit": ["exp"]}, 'its header has "crit"'),
        ({"jku": "https://evil.example/keys"}, 'its header has "jku"'),
        ({"x5u": "https://evil.example/c"}, 'its header has "x5u"'),
    ],
)
def test_headers_outside_the_spec_are_refused(headers: dict[str, object], reason: str) -> None:
    assert reason in refused(validator(bundle("example.org", k1=KEY)), forge(KEY, claims(), headers=headers))


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.e30.", "x" * 9000,
                                   base64.urlsafe_b64encode(b"[1]").decode().rstrip("=") + ".e30.c2ln"])
def test_malformed_tokens_are_refused(token: str) -> None:
    reason = refused(validator(bundle("example.org", k1=KEY)), token)
    assert reason


def test_a_cached_token_is_verified_once_until_the_bundle_changes() -> None:
    source = StaticJwtBundles({"example.org": bundle("example.org", k1=KEY, k2=OTHER_KEY)})
    v = JwtValidator(source, audiences=[BETA], trust_domains=["example.org"])
    token = forge(KEY, claims())
    results = {id(v.check(token)) for _ in range(1000)}
    assert v.verified == 1 and len(results) == 1
    source.set({"example.org": bundle("example.org", k2=OTHER_KEY)})  # k1 retired: no token of it stays accepted
    assert "key id \"k1\" is not in the JWT bundle" in refused(v, token)
    assert v.verified == 1  # refused at the key look-up, before any signature
    source.set({"example.org": bundle("example.org", k1=KEY)})
    assert isinstance(v.check(token), JwtSvid) and v.verified == 2


def test_a_cached_token_stops_working_when_it_expires() -> None:
    now = [time.time()]
    v = validator(bundle("example.org", k1=KEY), clock=lambda: now[0])
    token = forge(KEY, claims(ttl=60))
    assert isinstance(v.check(token), JwtSvid)
    now[0] += 60 + 31  # past exp and the skew
    assert "expired at" in refused(v, token)


def test_bearer_metadata() -> None:
    assert bearer_token((("authorization", "Bearer abc"),)) == "abc"
    assert bearer_token((("authorization", "bearer abc"),)) == "abc"
    assert bearer_token((("x", "y"),)) is None
    assert bearer_token((("authorization", "Basic dXNlcjpw"),)) is NOT_BEARER
    two = bearer_token((("authorization", "Bearer a"), ("authorization", "Bearer b")))
    assert isinstance(two, JwtRejection) and "more than one" in two.reason
    v = validator(bundle("example.org", k1=KEY))
    optional, required = JwtAuthn(v, "optional"), JwtAuthn(v, "required")
    assert optional.token((("authorization", "Basic x"),)) is None  # another scheme: no JWT-SVID
    basic = required.token((("authorization", "Basic x"),))
    assert isinstance(basic, JwtRejection) and "not 'Bearer <JWT-SVID>'" in basic.reason
    missing = required.token(())
    assert isinstance(missing, JwtRejection) and "carries no JWT-SVID" in missing.reason
    with pytest.raises(ValueError, match="principal"):
        JwtAuthn(v, "optional", "jwt")


# -- bundles -------------------------------------------------------------------------------------------------


def test_a_workload_api_jwks_takes_keys_without_use_and_jwt_svid_keys() -> None:
    rsa = rsa_key()
    doc = {"keys": [jwk(KEY, "a", use=None), jwk(rsa, "b"), jwk(OTHER_KEY, "c", use="x509-svid")]}
    parsed = parse_jwks(json.dumps(doc).encode(), "example.org")
    assert sorted(parsed.keys) == ["a", "b"]


def test_a_spiffe_bundle_file_takes_only_jwt_svid_keys() -> None:
    from meshnode.devagent.ca import DevCA
    from tests.support.federation import spiffe_bundle

    ca = DevCA("partner.org")
    doc = json.loads(spiffe_bundle(ca.bundle, sequence=4, jwt=False))
    doc["keys"] += [jwk(KEY, "j1"), jwk(OTHER_KEY, "j2", use=None), {"kty": "OKP", "crv": "Ed25519", "x": "AA",
                                                                    "use": "jwt-svid", "kid": "ed"}]
    parsed = parse_spiffe_jwt_bundle(json.dumps(doc).encode(), "partner.org")
    assert list(parsed.keys) == ["j1"] and parsed.sequence == 4
    assert any("kty \"OKP\"" in i for i in parsed.ignored)
    with pytest.raises(InvalidBundleError, match="holds no JWT-SVID key"):
        parse_spiffe_jwt_bundle(spiffe_bundle(ca.bundle, jwt=False), "partner.org")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ({**jwk(KEY, "k"), "d": "AAAA"}, "holds private key material (d)"),
        ({k: v for k, v in jwk(KEY, "k").items() if k != "kid"}, "has no kid"),
        ({**jwk(KEY, "k"), "crv": "P-192"}, "is not P-256, P-384 or P-521"),
        ({**jwk(KEY, "k"), "x": "AAAA"}, "is not a valid public key"),
    ],
)
def test_bad_jwt_keys_refuse_the_bundle(key: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidBundleError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_jwks(json.dumps({"keys": [key]}).encode(), "example.org")


def test_two_keys_with_one_kid_and_small_rsa_keys() -> None:
    with pytest.raises(InvalidBundleError, match="two keys have the kid"):
        parse_jwks(json.dumps({"keys": [jwk(KEY, "k"), jwk(OTHER_KEY, "k")]}).encode(), "example.org")
    small = parse_jwks(json.dumps({"keys": [jwk(rsa_key(1024), "r")]}).encode(), "example.org")
    assert not small.keys and "1024-bit RSA key" in small.ignored[0]


def test_merged_bundles_prefer_the_first_source_on_a_shared_kid() -> None:
    merged = merge_bundles({"example.org": bundle("example.org", k1=KEY)},
                           {"example.org": bundle("example.org", k1=OTHER_KEY, k2=OTHER_KEY)})
    assert merged["example.org"].keys["k1"].public_numbers() == KEY.public_key().public_numbers()
    assert sorted(merged["example.org"].keys) == ["k1", "k2"]


def test_dev_ca_jwt_keys_follow_its_rotation() -> None:
    ca = DevCA("example.org")
    dev = DevJwt(ca, lambda: parse_spiffe_id(ALPHA))
    v = JwtValidator(dev, audiences=[BETA], trust_domains=["example.org"])
    old = dev.fetch(BETA)
    first = dev.current()
    assert dev.current() is first  # unchanged: the same set, so cached tokens stay cached
    ca.prepare_rotation()
    assert len(dev.current().bundles["example.org"].keys) == 2  # the next key is trusted before it signs
    ca.activate_next()
    new = dev.fetch(BETA)
    assert json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "==")) != json.loads(
        base64.urlsafe_b64decode(old.split(".")[0] + "=="))
    assert isinstance(v.check(old), JwtSvid) and isinstance(v.check(new), JwtSvid)
    ca.retire_previous()
    assert "is not in the JWT bundle" in refused(v, old)
    assert isinstance(v.check(new), JwtSvid)


def test_tokens_read_by_their_holder() -> None:
    token = Token.read(forge(KEY, claims(ttl=100)), received=time.time())
    assert token.refresh_at() == pytest.approx(token.issued_at + 50, abs=1)
    assert "value" not in repr(token) and token.value not in repr(token)
    with pytest.raises(JwtSvidError, match="expired"):
        Token.read(forge(KEY, claims(ttl=-100)), received=time.time())


def test_token_values_are_clipped_in_reasons_and_claims_are_read_only() -> None:
    v = validator(bundle("example.org", k1=KEY))
    reason = refused(v, forge(KEY, claims(), kid="x" * 5000))  # a reason reaches status details and audit logs
    assert "key id" in reason and len(reason) < 200
    reason = refused(v, forge(KEY, claims(aud=["y" * 800] * 5)))
    assert "names none of this server's audiences" in reason and len(reason) < 400
    result = v.check(forge(KEY, {**claims(), "groups": ["a"], "meta": {"x": [1]}}))
    assert isinstance(result, JwtSvid)
    assert result.claims["groups"] == ("a",) and result.claims["meta"]["x"] == (1,)
    with pytest.raises(TypeError):  # one object serves every call with this token: nobody may change it
        result.claims["meta"]["x"] = 2  # type: ignore[index]
