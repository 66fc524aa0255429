"""The JWT-SVIDs a node sends: one per audience, fetched once, renewed in the background before half-life.

A :class:`TokenSlot` holds the token of one audience from one
:class:`TokenFetcher` (the Workload API, the dev CA, or a
:class:`TokenFile`). Calling the slot is what a call's path does: it
returns the ``("authorization", "Bearer <JWT-SVID>")`` metadata pair - one
attribute read and one clock read - or, when there is no usable token, the
reason (the call then fails UNAUTHENTICATED without being sent). A call
never waits for a fetch.

:class:`PeerTokens` owns the slots and one thread (``meshnode-jwt-tokens``)
that fetches: every slot once at :meth:`PeerTokens.start` (on the caller's
thread, before the node serves), then each again at half its token's life
(counted from its ``iat``, or from when it arrived if that is earlier), and
a token file whenever it changes on disk (checked every ``poll_interval``).
A failed fetch keeps the current token while it is valid and is retried
with a backoff from 0.5 s doubling to 10 s; each distinct reason is logged
once. Slots are shared: peers with the same audience and fetcher get the
same slot, so N calls to M such peers cost one fetch per renewal.

The token never appears in a log line, a message or a ``repr``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from meshnode.errors import JwtSvidError
from meshnode.identity.rejects import Rejections, describe_error
from meshnode.jwtsvid.token import MAX_TOKEN_CHARS, Token, shown

__all__ = ["Header", "PeerTokens", "TokenFetcher", "TokenFile", "TokenSlot"]

log = logging.getLogger("meshnode.jwt")

#: The metadata pair a call carries.
Header = tuple[str, str]
Stamp = tuple[int, int, int, int]
_FIRST_BACKOFF = 0.5
_UNSEEN = object()  # a token file not looked at yet (its stamp may well be None: missing)
_MAX_BACKOFF = 10.0


class TokenFetcher(Protocol):
    """Where JWT-SVIDs come from; :meth:`fetch` may block (it runs on the token thread)."""

    @property
    def description(self) -> str: ...

    def fetch(self, audience: str) -> str:
        """A JWT-SVID for ``audience``; raises JwtSvidError saying why there is none."""
        ...


class TokenFile:
    """A JWT-SVID in a file, as spiffe-helper writes one per audience (``jwt_svids``); re-read on change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"the token file {path}"

    def stamp(self) -> Stamp | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def fetch(self, audience: str) -> str:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_TOKEN_CHARS + 64)
        except FileNotFoundError:
            reason = f"{self.description} does not exist"
            raise JwtSvidError(f"jwt: {reason}", reason=reason) from None
        except OSError as exc:
            reason = f"{self.description} cannot be read ({exc.strerror})"
            raise JwtSvidError(f"jwt: {reason}", reason=reason) from None
        if len(data) >= MAX_TOKEN_CHARS + 64:
            reason = f"{self.description} is larger than a JWT-SVID may be ({MAX_TOKEN_CHARS} characters)"
            raise JwtSvidError(f"jwt: {reason}", reason=reason)
        try:
            return data.decode("ascii").strip()
        except UnicodeDecodeError:
            reason = f"{self.description} does not hold a JWT (not ASCII text)"
            raise JwtSvidError(f"jwt: {reason}", reason=reason) from None


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


class TokenSlot:
    """The JWT-SVID of one audience; call it for the metadata pair (or the reason there is none)."""

    def __init__(
        self, audience: str, fetcher: TokenFetcher, *, clock: Callable[[], float], rejections: Rejections
    ) -> None:
        self.audience = audience
        self.fetcher = fetcher
        self._clock = clock
        self._rejections = rejections
        self._current: tuple[Header, float] | None = None  # (metadata pair, expiry): one read on a call's path
        self._token: Token | None = None
        self._stamp: Stamp | object | None = _UNSEEN
        self._backoff = _FIRST_BACKOFF
        self._retry_at = 0.0
        #: why the last fetch failed ("" after a good one)
        self.error = ""
        #: how many fetches were made (good or not)
        self.fetches = 0

    # -- the call's path ----------------------------------------------------

    def __call__(self) -> Header | str:
        """The ``authorization`` metadata pair, or why there is no usable token (never blocks)."""
        current = self._current
        if current is not None and self._clock() < current[1]:
            return current[0]
        token = self._token
        if token is None:
            return (f"no JWT-SVID for audience {self.audience!r} from {self.fetcher.description}: "
                    f"{self.error or 'not fetched yet'}")
        return (f"the JWT-SVID for audience {self.audience!r} expired at {_iso(token.expiry)} and could not be "
                f"renewed: {self.error or 'renewal pending'}")

    # -- the token thread ---------------------------------------------------

    @property
    def token(self) -> Token | None:
        """The token held now (None before the first good fetch)."""
        return self._token

    @property
    def refresh_at(self) -> float | None:
        """When the token is renewed next (epoch seconds): half its life; None while there is none."""
        token = self._token
        return token.refresh_at() if token is not None else None

    def due(self, now: float) -> float:
        """When this slot next needs the thread (epoch seconds)."""
        if self.error or self._token is None:
            return self._retry_at
        assert self._token is not None
        return self._token.refresh_at()

    def watches_file(self) -> bool:
        return isinstance(self.fetcher, TokenFile)

    def maybe_refresh(self, now: float) -> None:
        """Fetch when due, or (a token file) when the file changed."""
        if isinstance(self.fetcher, TokenFile):
            stamp = self.fetcher.stamp()
            if stamp != self._stamp or (self.error and now >= self._retry_at):
                self._stamp = stamp
                self.fetch()
            return
        if now >= self.due(now):
            self.fetch()

    def fetch(self) -> bool:
        """Fetch a token now (on the token thread, or at start); True when a good one was taken."""
        self.fetches += 1
        try:
            raw = self.fetcher.fetch(self.audience)
            token = Token.read(raw, received=self._clock())
            if self.audience not in token.audience:
                named = ", ".join(shown(a) for a in token.audience[:4])
                raise JwtSvidError("jwt: wrong audience", reason=(
                    f"{self.fetcher.description} gave a JWT-SVID for audience [{named}], not {self.audience!r}"))
        except JwtSvidError as exc:
            self._failed(exc.reason)
            return False
        except Exception as exc:  # a fetcher's surprise is a failed fetch, never a dead thread
            self._failed(describe_error(exc))
            return False
        renewed = self._token is not None
        self._token = token
        self._current = (("authorization", f"Bearer {token.value}"), token.expiry)
        if self.error:
            log.info("jwt: JWT-SVID for audience %r obtained again from %s", self.audience, self.fetcher.description)
        self.error = ""
        self._backoff = _FIRST_BACKOFF
        self._rejections.accepted()
        log.debug("jwt: %s JWT-SVID for audience %r from %s: subject %s, expires %s, renewal at %s",
                  "renewed" if renewed else "got", self.audience, self.fetcher.description, token.subject,
                  _iso(token.expiry), _iso(token.refresh_at()))
        return True

    def _failed(self, reason: str) -> None:
        self.error = reason
        now = self._clock()
        token = self._token
        delay = self._backoff
        if token is not None and not token.expired(now):
            delay = min(delay, max((token.expiry - now) / 4, 0.05))  # try again before it expires
        self._retry_at = now + delay
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        keeping = ("keeping the current one until " + _iso(token.expiry)) if token is not None and not token.expired(
            now) else "calls needing it fail with UNAUTHENTICATED"
        self._rejections.reject((self.audience, reason),
                                f"jwt: no JWT-SVID for audience {self.audience!r}: {reason}; {keeping}; retrying")


class PeerTokens:
    """Every JWT-SVID slot of a node, and the thread that keeps them fresh."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.5,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._interval = poll_interval
        self._on_error = on_error
        self._slots: dict[tuple[str, object], TokenSlot] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def slot(self, audience: str, fetcher: TokenFetcher) -> TokenSlot:
        """The slot of ``audience`` from ``fetcher`` (one per pair: peers share it); before :meth:`start`."""
        key: tuple[str, object] = (audience, fetcher.path if isinstance(fetcher, TokenFile) else fetcher)
        found = self._slots.get(key)
        if found is None:
            found = TokenSlot(audience, fetcher, clock=self._clock, rejections=Rejections(self._on_error))
            self._slots[key] = found
        return found

    @property
    def slots(self) -> tuple[TokenSlot, ...]:
        return tuple(self._slots.values())

    def start(self) -> list[str]:
        """Fetch every token once, now (blocking), then keep them fresh; returns what could not be fetched."""
        problems = []
        for slot in self._slots.values():
            if isinstance(slot.fetcher, TokenFile):
                slot.maybe_refresh(self._clock())
            else:
                slot.fetch()
            if slot.error:
                problems.append(f"audience {slot.audience!r} from {slot.fetcher.description}: {slot.error}")
        if self._slots and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="meshnode-jwt-tokens", daemon=True)
            self._thread.start()
        return problems

    def wake(self) -> None:
        """Look at every slot now (thread-safe), e.g. after moving an injected clock."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            now = self._clock()
            for slot in list(self._slots.values()):
                if self._stop.is_set():
                    return
                slot.maybe_refresh(now)
            now = self._clock()
            due = [slot.due(now) for slot in self._slots.values()]
            if any(slot.watches_file() for slot in self._slots.values()):
                due.append(now + self._interval)
            self._wake.wait(max(min(due, default=now + 60.0) - now, 0.01))

    def close(self) -> None:
        """Stop the thread; close the fetchers that can be (a Workload API client); idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        for fetcher in {id(s.fetcher): s.fetcher for s in self._slots.values()}.values():
            close = getattr(fetcher, "close", None)
            if close is not None:
                close()
