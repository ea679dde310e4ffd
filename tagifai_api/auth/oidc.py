"""Access tokens from an organisation's identity provider (OpenID Connect), checked with PyJWT.

No Flask: :class:`Verifier` turns a token into a :class:`TokenIdentity` (its subject and role) or
raises :class:`TokenError` (401) or :class:`ProviderUnavailableError` (503). The guard calls it
for a bearer value that is a JWT (two dots) rather than an API key (``tagifai_...``).

Signing keys: the issuer's discovery document (``<issuer>/.well-known/openid-configuration``, whose
``issuer`` must be the configured one) names the ``jwks_uri``; its keys are cached per worker. A
token naming a key id the cache lacks triggers one fetch (a key rotated at the provider), at most
once every ``refetch_s`` seconds whatever arrives, so a flood of forged key ids cannot make the
service hammer the provider; concurrent requests share a fetch in flight. Cached keys are also
refreshed in the background every ``max_age_s`` (a key withdrawn at the provider stops passing),
while requests go on with the keys in hand. A provider that is slow or down stalls only a request
whose key id is not cached, and for at most one fetch timeout: cached keys keep passing, other
tokens get 401, and while no key was ever fetched 503 with ``Retry-After``.

Checks: the header's ``alg`` is in the allow-list (asymmetric only: ``none`` and HMAC are refused
whatever the settings say, so the provider's public key can never serve as an HMAC secret), the
signature with the key of the header's ``kid``, ``iss``, ``aud``, ``exp`` (required), ``nbf`` and
``iat`` with a small clock leeway, and a ``sub``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from tagifai_api.auth.keys import ROLES

if TYPE_CHECKING:
    import jwt

log = logging.getLogger("tagifai_api.auth")

#: asymmetric algorithms PyJWT verifies with a public key; anything else is refused as a setting
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
#: longer tokens are refused unparsed (identity providers' access tokens are a few KiB at most)
MAX_TOKEN_LENGTH = 8000
#: largest discovery document or key set read from the provider
MAX_DOCUMENT_BYTES = 1 << 20
#: longest name the access line, the audit log and the feedback table record (an API key's longest)
NAME_LENGTH = 64


class TokenError(Exception):
    """A token the service does not accept (401): the message says why, never echoing the token."""


class ProviderUnavailableError(Exception):
    """No signing key was ever fetched from the provider (503, retry after ``retry_after`` seconds)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenIdentity:
    """Who a valid token stands for: ``name`` is its subject (see :func:`recorded_name`), ``role``
    the strongest of the service's roles it holds (None: none)."""

    name: str
    role: str | None
    issuer: str
    kind: str = "token"


def recorded_name(subject: str) -> str:
    """The name a token's subject is recorded under (access line, audit log, feedback): the subject
    itself up to the 64 characters those records hold (as a key's name), else a prefix and a digest
    of the whole, so two long subjects never share a name."""
    if len(subject) <= NAME_LENGTH:
        return subject
    digest = hashlib.sha256(subject.encode()).hexdigest()[:12]
    return f"{subject[:NAME_LENGTH - 13]}~{digest}"


def looks_like_jwt(value: str) -> bool:
    """A compact JWS has exactly two dots; an API key has none."""
    return value.count(".") == 2


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> None:
    """HTTPS, or plain HTTP to this machine only (a provider on loopback, as in tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and _loopback(parts.hostname):
        return
    raise ValueError(f"{what} must be an https:// URL (http:// only on loopback), got {url!r}")


def parse_algorithms(value: str | Iterable[str]) -> tuple[str, ...]:
    names = [a.strip() for a in (value.split(",") if isinstance(value, str) else value) if a.strip()]
    wrong = [a for a in names if a not in ASYMMETRIC]
    if wrong or not names:
        raise ValueError(f"TAGIFAI_OIDC_ALGORITHMS: only asymmetric algorithms ({', '.join(sorted(ASYMMETRIC))}) "
                         f"may verify tokens; got {', '.join(wrong) or 'none'}")
    return tuple(names)


def _claim(claims: dict, path: str) -> object:
    """``claims`` at a dotted path (``realm_access.roles``); a key holding dots itself wins."""
    if path in claims:
        return claims[path]
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class Verifier:
    """One worker's token check and its cache of the provider's signing keys."""

    def __init__(self, issuer: str, audience: str, *, algorithms: str | Iterable[str] = ("RS256", "ES256"),
                 roles_claim: str = "roles", role_names: dict[str, str] | None = None, leeway_s: float = 30.0,
                 refetch_s: float = 5.0, timeout_s: float = 2.0, max_age_s: float = 600.0,
                 on_fetch_error: Callable[[], None] | None = None) -> None:
        if not issuer or not audience:
            raise ValueError("TAGIFAI_OIDC_ISSUER and TAGIFAI_OIDC_AUDIENCE are set together (tokens need both)")
        check_url(issuer, "TAGIFAI_OIDC_ISSUER")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = parse_algorithms(algorithms)
        self.roles_claim = roles_claim
        names = role_names or {role: f"tagifai:{role}" for role in ROLES}
        self._roles = {names[role]: role for role in ROLES}  # claim value -> role
        self.leeway_s = leeway_s
        self.refetch_s = refetch_s
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self.on_fetch_error = on_fetch_error
        self.discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at = float("-inf")  # last attempt, successful or not
        self._jwks_uri: str | None = None
        self._lock = threading.Lock()
        self._done: threading.Event | None = None  # set when the fetch in flight ends
        self._failure: str | None = None
        self.fetches = 0  # attempts, for tests and the benchmark

    # -- keys ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Fetch the keys in the background (a worker's start never waits for the provider)."""
        self._begin_fetch()

    def _begin_fetch(self) -> threading.Event | None:
        """Start a fetch unless one is in flight or one began less than ``refetch_s`` ago; return
        the event of the fetch in flight, or None when none is allowed now."""
        with self._lock:
            if self._done is not None:
                return self._done
            now = time.monotonic()
            if now - self._attempted_at < self.refetch_s:
                return None
            self._attempted_at = now
            self._done = done = threading.Event()
        threading.Thread(target=self._fetch, args=(done,), name="tagifai-jwks-fetch", daemon=True).start()
        return done

    def _get_json(self, url: str) -> dict:
        request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "tagifai-api"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - URL checked
            body = response.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return document

    def _fetch(self, done: threading.Event) -> None:
        self.fetches += 1
        try:
            if self._jwks_uri is None:
                discovery = self._get_json(self.discovery_url)
                if discovery.get("issuer") != self.issuer:
                    raise ValueError(f"the discovery document names the issuer {discovery.get('issuer')!r}, "
                                     f"not {self.issuer!r}")
                uri = discovery.get("jwks_uri")
                if not isinstance(uri, str):
                    raise ValueError("the discovery document has no jwks_uri")
                check_url(uri, "jwks_uri")
                self._jwks_uri = uri
            keys = self._parse_jwks(self._get_json(self._jwks_uri))
        except Exception as exc:  # noqa: BLE001 - any failure keeps the keys in hand
            self._jwks_uri = None  # discover again next time: the provider may have moved its keys
            message = f"fetching the identity provider's signing keys failed: {exc}"
            if message != self._failure:
                log.error("%s; keeping the %d keys fetched before", message, len(self._keys))
            self._failure = message
            if self.on_fetch_error is not None:
                self.on_fetch_error()
        else:
            if self._failure is not None or set(keys) != set(self._keys):
                log.info("signing keys of %s: %s", self.issuer, ", ".join(sorted(keys)) or "none")
            self._failure = None
            self._keys = keys
            self._fetched_at = time.monotonic()
        finally:
            with self._lock:
                self._done = None
            done.set()

    def _parse_jwks(self, document: dict) -> dict[str, jwt.PyJWK]:
        import jwt  # PyJWT and cryptography only in workers that check tokens (about 35 ms, 10 MB each)

        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ValueError("the key set has no 'keys' list")
        keys = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK(entry)
            except jwt.PyJWTError:  # a key type or algorithm this service does not use
                continue
        return keys

    def _key(self, kid: str) -> jwt.PyJWK:
        """The signing key ``kid``: from the cache, else after one fetch (if one is allowed now)."""
        key = self._keys.get(kid)
        if key is not None:
            if self._fetched_at is not None and time.monotonic() - self._fetched_at > self.max_age_s:
                self._begin_fetch()  # refresh in the background; this request goes on with the key in hand
            return key
        done = self._begin_fetch()
        if done is not None:
            done.wait(self.timeout_s * 2 + 0.5)  # discovery and key set, each bounded by the timeout
            key = self._keys.get(kid)
            if key is not None:
                return key
        if self._fetched_at is None:
            wait = max(1, round(self.refetch_s - (time.monotonic() - self._attempted_at)))
            raise ProviderUnavailableError("The identity provider's signing keys could not be fetched yet, so "
                                           "tokens cannot be checked; retry shortly.", wait)
        raise TokenError("The token is signed with a key the identity provider does not publish.")

    # -- tokens --------------------------------------------------------------------------------

    def verify(self, token: str) -> TokenIdentity:
        """The identity a valid token stands for; :class:`TokenError` for any other token."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("The token is too long.")
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("The token is malformed.") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise TokenError(f"The token's algorithm is not accepted (accepted: {', '.join(self.algorithms)}).")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("The token names no signing key (kid).")
        key = self._key(kid)
        try:
            claims = jwt.decode(token, key=key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                leeway=self.leeway_s, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise TokenError("The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("The token is not valid yet.") from None
        except jwt.InvalidIssuerError:
            raise TokenError("The token was issued by another issuer.") from None
        except jwt.InvalidAudienceError:
            raise TokenError("The token is meant for another audience.") from None
        except jwt.InvalidSignatureError:
            raise TokenError("The token's signature does not verify.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"The token lacks the '{exc.claim}' claim.") from None
        except jwt.PyJWTError:
            raise TokenError("The token is not valid.") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise TokenError("The token's subject is not a string.")
        return TokenIdentity(name=recorded_name(subject), role=self._role(claims), issuer=self.issuer)

    def _role(self, claims: dict) -> str | None:
        value = _claim(claims, self.roles_claim)
        names = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
        held = {self._roles[n] for n in names if isinstance(n, str) and n in self._roles}
        return max(held, key=ROLES.index) if held else None


def from_settings(config, on_fetch_error: Callable[[], None] | None = None) -> Verifier | None:
    """The verifier the settings describe, or None when ``OIDC_ISSUER`` and ``OIDC_AUDIENCE`` are unset."""
    issuer, audience = str(config["OIDC_ISSUER"] or ""), str(config["OIDC_AUDIENCE"] or "")
    if not issuer and not audience:
        return None
    return Verifier(issuer, audience, algorithms=str(config["OIDC_ALGORITHMS"]),
                    roles_claim=str(config["OIDC_ROLES_CLAIM"]),
                    role_names={"predict": str(config["OIDC_PREDICT_ROLE"]), "admin": str(config["OIDC_ADMIN_ROLE"])},
                    leeway_s=float(config["OIDC_LEEWAY_S"]), refetch_s=float(config["OIDC_REFETCH_S"]),
                    timeout_s=float(config["OIDC_TIMEOUT_S"]), on_fetch_error=on_fetch_error)
