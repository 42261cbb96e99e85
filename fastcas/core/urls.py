"""Credentials in URLs: found, and redacted from every message fastcas prints or writes.

A URL's *userinfo* (``http://user:password@host/...``, ``s3://KEY:SECRET@bucket/...``) is a
secret. ``fastcas index`` refuses it (it would be written into ``manifest.json``); anything
that formats a URL into an exception, a warning or a printed line passes the text through
:func:`redact`, which keeps the user name and hides the rest: ``user:***@`` (a lone userinfo
without ``:``, often a token, becomes ``***@``).
"""
from __future__ import annotations

import re

# scheme://AUTHORITY: the authority ends at the first '/', '?', '#', whitespace or quote; its
# userinfo runs to the LAST '@' in it (as urllib.parse splits: a raw '@' inside a password).
# Or, a secret with an unencoded '/' (AWS secret keys are base64: 'wJal/rX...'), which RFC 3986
# parsers split as host "user" and port "pa": USER:PASS@ where PASS runs to the first '@' and
# its part before the first '/' is not a port (digits), so host:8080/path@x stays a path.
# "scheme:/" too: a URL that went through pathlib.Path lost one slash ("http:/user:pw@host/x")
_USERINFO = re.compile(
    r"\b([A-Za-z][A-Za-z0-9+.-]+:/{1,2})"
    r"([^/?#\s'\"<>]*|[^/?#\s'\"<>:@\[\]]+:(?!\d*/)[^?#\s'\"<>@]*)@"
)
def _hide(m: re.Match) -> str:
    user, colon, _ = m.group(2).partition(":")
    return f"{m.group(1)}{user}:***@" if colon else f"{m.group(1)}***@"


def redact(text) -> str:
    """``text`` (any object, as ``str``) with the userinfo of every URL in it replaced by
    ``user:***@`` (or ``***@`` when it has no ``:``); text without such URLs is unchanged."""
    return _USERINFO.sub(_hide, str(text))


def has_userinfo(url: str) -> bool:
    """True when ``url`` (``scheme://...``) carries a userinfo part (``user[:password]@``, the
    password unencoded '/' included)."""
    return bool(_USERINFO.match(str(url)))
