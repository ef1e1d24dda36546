"""SHA-256 without loading OpenSSL.

hashlib's import loads OpenSSL's libcrypto and initialises it: about 12
million instructions, a fifth of what ulp-trigger's whole apply may spend
(docs/trigger.md, "Speed").  CPython's own SHA-256 module, which hashlib
itself falls back to without OpenSSL, loads in a fraction of that; the
data hashed here (a patch file, its patch object) is small.  Named
``_sha256`` up to Python 3.11 and ``_sha2`` since 3.12; hashlib if neither.
"""

from __future__ import annotations

try:
    from _sha256 import sha256
except ImportError:  # pragma: no cover - depends on the Python version
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

__all__ = ["sha256"]
