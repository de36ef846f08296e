"""The web console: pages for QA reviewers, supervisors, the DPO, auditors and admins.

A Starlette application (:class:`Console`) with Jinja2 templates and one stylesheet, all
served from this package (no CDN, no external font; one small script of ours,
``static/webauthn.js``, for security keys, which the browser's API needs; every page works with
forms and links without it, and the browser's own ``<audio>`` player asks for ranges). The
``web`` door
(:mod:`sampledrec.serve.web`) runs it in the server's event loop with uvicorn. Accounts,
sign-in and permissions are the library's (:mod:`sampledrec.accounts`); this package only
speaks HTTP. Needs the ``console`` extra.
"""

from .app import CSP, MAX_RANGE_BYTES, Console, safe_next

__all__ = ["CSP", "MAX_RANGE_BYTES", "Console", "safe_next"]
