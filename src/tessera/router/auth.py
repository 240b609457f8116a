"""API keys of the router: a file of keys (or their sha256 hashes), reloaded when it changes.

The file has one key per line; a line `sha256:<64 hex digits>` is an already hashed key, blank
lines and lines starting with `#` are ignored. Only sha256 digests are kept in memory. The file
is re-read when its inode, size or modification time change (checked at most every
`check_interval_s`): a Kubernetes Secret volume replaces it by a symlink swap, which changes
the inode. A file that cannot be read keeps the keys loaded before (and says so); a file with
no key refuses everyone. Comparison is constant-time (`hmac.compare_digest`) over every key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pathlib
import re
import time
from collections.abc import Callable

from tessera.errors import InvalidInput

log = logging.getLogger("tessera.router")
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_keys(text: str) -> list[bytes]:
    """sha256 digests of the keys in a key file's text."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        hashed = _HASHED.match(line)
        out.append(bytes.fromhex(hashed.group(1)) if hashed else digest(line))
    return out


class ApiKeys:
    def __init__(
        self,
        path: pathlib.Path,
        *,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._digests: list[bytes] = []
        self._stamp: tuple[int, int, int] | None = None
        self._checked_s = -1e18
        if not self._reload(first=True):
            raise InvalidInput("--api-keys-file", f"cannot read {path}")
        log.info("API keys: %d loaded from %s (reloaded when it changes)", len(self), path)

    def __len__(self) -> int:
        return len(self._digests)

    def _reload(self, *, first: bool = False) -> bool:
        try:
            st = os.stat(self.path)  # follows the Secret volume's symlinks
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return True
            digests = parse_keys(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            if not first:
                log.warning(
                    "cannot re-read %s (%s); keeping the %d keys loaded", self.path, exc, len(self)
                )
            return False
        self._digests, self._stamp = digests, stamp
        if not first:
            log.info("API keys reloaded from %s: %d keys", self.path, len(digests))
        if not digests:
            log.warning("%s holds no API key: every request will be refused", self.path)
        return True

    def check(self, key: str | None) -> bool:
        now = self._clock()
        if now - self._checked_s >= self.check_interval_s:
            self._checked_s = now
            self._reload()
        if not key:
            return False
        presented = digest(key)
        ok = False
        for d in self._digests:  # no early exit: the time does not depend on which key matched
            ok |= hmac.compare_digest(presented, d)
        return ok
