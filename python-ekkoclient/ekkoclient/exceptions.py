"""Errors of the Ekko client.

The API answers errors in the API-SIG shape::

    {"errors": [{"request_id": "req-...", "code": "instance-backup.not_found",
                 "status": 404, "title": "Not Found",
                 "detail": "backup 123 does not exist", "links": [...]}]}

:func:`from_response` turns such a response (or anything else a proxy or a
broken deployment may answer) into an :class:`ApiError` subclass chosen by
the HTTP status, whose message is one clear line for the command line.
"""

import json


class EkkoError(Exception):
    """Base class of every error this client raises."""


class EndpointNotFound(EkkoError):
    """No Ekko endpoint in the catalog and no override."""


class ApiError(EkkoError):
    """An error answer of the API."""

    http_status = None

    def __init__(self, status, code=None, title=None, detail=None,
                 request_id=None, method=None, url=None, extra=None):
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.request_id = request_id
        self.method = method
        self.url = url
        self.extra = extra or {}
        super().__init__(self.message)

    @property
    def short_code(self):
        """The code without the service-type prefix (``not_found``)."""
        if not self.code:
            return None
        return self.code.split(".", 1)[-1]

    @property
    def message(self):
        title = self.title or _TITLES.get(self.status) or "Error"
        head = "%s (HTTP %s" % (title, self.status)
        if self.code:
            head += ", %s" % self.code
        head += ")"
        parts = [head]
        if self.detail:
            parts[0] += ": " + self.detail
        hint = _HINTS.get(self.status)
        if hint:
            parts.append(hint)
        if self.request_id:
            parts.append("(request %s)" % self.request_id)
        return " ".join(parts)

    def __str__(self):
        return self.message


class BadRequest(ApiError):
    http_status = 400


class Unauthorized(ApiError):
    http_status = 401


class Forbidden(ApiError):
    http_status = 403


class QuotaExceeded(Forbidden):
    """403 ``instance-backup.quota_exceeded``."""


class NotFound(ApiError):
    http_status = 404


class NotAcceptable(ApiError):
    http_status = 406


class Conflict(ApiError):
    http_status = 409


class TooManyRequests(ApiError):
    http_status = 429


class InternalServerError(ApiError):
    http_status = 500


class ServiceUnavailable(ApiError):
    http_status = 503


_CLASSES = {c.http_status: c for c in (
    BadRequest, Unauthorized, Forbidden, NotFound, NotAcceptable, Conflict,
    TooManyRequests, InternalServerError, ServiceUnavailable)}

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    409: "Conflict", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}

_HINTS = {
    401: "- the token was refused; check your credentials.",
}


def _text(value):
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return str(value)


def from_response(status, body, headers=None, method=None, url=None):
    """Build the :class:`ApiError` for an error answer.

    ``body`` is the raw body (``bytes`` or ``str``) or already decoded JSON.
    """
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    request_id = headers.get("x-openstack-request-id")
    code = title = detail = None
    extra = {}
    data = body
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            data = json.loads(body) if body.strip() else None
        except ValueError:
            data = None
            text = body.strip()
            if text:
                detail = text if len(text) <= 200 else text[:200] + "..."
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            # API-SIG: the first error is the one to tell.
            e = errors[0]
            code = _text(e.get("code"))
            title = _text(e.get("title"))
            detail = _text(e.get("detail"))
            request_id = _text(e.get("request_id")) or request_id
            extra = {k: v for k, v in e.items() if k not in (
                "code", "title", "detail", "request_id", "status", "links")}
            if len(errors) > 1:
                extra["more_errors"] = len(errors) - 1
        elif isinstance(data.get("error"), dict):
            # Keystone's shape (when a proxy in front answers for it).
            e = data["error"]
            title = _text(e.get("title"))
            detail = _text(e.get("message"))
        elif len(data) == 1 and isinstance(next(iter(data.values())), dict):
            # The older {"<faultName>": {"code", "message"}} shape.
            fault, e = next(iter(data.items()))
            title = fault
            detail = _text(e.get("message"))
        elif isinstance(data.get("message"), str):
            detail = data["message"]
    cls = _CLASSES.get(status, ApiError)
    if status == 403 and code and code.endswith(".quota_exceeded"):
        cls = QuotaExceeded
    return cls(status, code=code, title=title, detail=detail,
               request_id=request_id, method=method, url=url, extra=extra)
