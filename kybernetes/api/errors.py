"""API errors as upstream shapes them: metav1.Status bodies and field errors.

Every error a user can meet leaves the server as a StatusError, rendered as a
metav1.Status with the upstream reason and HTTP code. Field errors carry the
upstream cause types (FieldValueRequired, FieldValueInvalid, ...) and render
their messages the way apimachinery's field.Error does, so kubectl prints what
users are used to reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# field.ErrorType -> (cause reason, message prefix), as apimachinery names them.
_FIELD_ERROR_TYPES: dict[str, tuple[str, str]] = {
    "Required": ("FieldValueRequired", "Required value"),
    "Invalid": ("FieldValueInvalid", "Invalid value"),
    "Duplicate": ("FieldValueDuplicate", "Duplicate value"),
    "NotSupported": ("FieldValueNotSupported", "Unsupported value"),
    "Forbidden": ("FieldValueForbidden", "Forbidden"),
    "TooLong": ("FieldValueTooLong", "Too long"),
    "TooMany": ("FieldValueTooMany", "Too many"),
    "Internal": ("InternalError", "Internal error"),
    "TypeInvalid": ("FieldValueTypeInvalid", "Invalid value"),
    "NotFound": ("FieldValueNotFound", "Not found"),
}

_NO_VALUE = object()


def _render_value(value: Any) -> str:
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    return orjson.dumps(value).decode()


@dataclass
class FieldError:
    """One problem with one field, like apimachinery's field.Error."""

    type: str  # a key of _FIELD_ERROR_TYPES: "Required", "Invalid", ...
    field: str  # path such as "spec.containers[0].image"
    detail: str = ""
    value: Any = _NO_VALUE

    @property
    def reason(self) -> str:
        return _FIELD_ERROR_TYPES.get(self.type, ("FieldValueInvalid", ""))[0]

    def body(self) -> str:
        """The message without the field path: 'Required value', 'Invalid value: "x": detail'."""
        prefix = _FIELD_ERROR_TYPES.get(self.type, ("", self.type))[1]
        out = prefix
        show_value = self.value is not _NO_VALUE and self.type not in ("Required", "Forbidden", "TooLong",
                                                                     "Internal", "NotFound")
        if self.type == "TypeInvalid" and self.value is not _NO_VALUE:
            show_value = True
        if show_value:
            out += ": " + _render_value(self.value)
        if self.detail:
            out += ": " + self.detail
        return out

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}" if self.field else self.body()

    def cause(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.body(), "field": self.field}


def required(field: str, detail: str = "") -> FieldError:
    return FieldError("Required", field, detail)


def invalid(field: str, value: Any, detail: str = "") -> FieldError:
    return FieldError("Invalid", field, detail, value)


def not_supported(field: str, value: Any, valid: list[str]) -> FieldError:
    detail = "supported values: " + ", ".join(orjson.dumps(v).decode() for v in valid) if valid else ""
    return FieldError("NotSupported", field, detail, value)


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError("Forbidden", field, detail)


def duplicate(field: str, value: Any) -> FieldError:
    return FieldError("Duplicate", field, "", value)


def too_long(field: str, max_len: int) -> FieldError:
    return FieldError("TooLong", field, f"may not be more than {max_len} bytes")


class StatusError(Exception):
    """An error that becomes a metav1.Status response."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The metav1.Status, its fields in upstream's order (clients compare the bytes)."""
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": self.message}
        if self.reason:
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body

    def to_json(self) -> bytes:
        """The Status as JSON, to embed in another document (a watch event)."""
        return orjson.dumps(self.status())

    def to_bytes(self) -> bytes:
        """The Status as a response body: JSON and a newline, as kube-apiserver's encoder writes it."""
        return orjson.dumps(self.status()) + b"\n"


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> StatusError:
    qr = _qualified(resource, group)
    return StatusError(404, "NotFound", f'{qr} "{name}" not found',
                       {"name": name, "group": group, "kind": resource} if group else
                       {"name": name, "kind": resource})


def already_exists(resource: str, group: str, name: str) -> StatusError:
    qr = _qualified(resource, group)
    details = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return StatusError(409, "AlreadyExists", f'{qr} "{name}" already exists', details)


def conflict(resource: str, group: str, name: str, why: str) -> StatusError:
    qr = _qualified(resource, group)
    details = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return StatusError(409, "Conflict", f'Operation cannot be fulfilled on {qr} "{name}": {why}', details)


def stale_conflict(resource: str, group: str, name: str) -> StatusError:
    return conflict(resource, group, name,
                    "the object has been modified; please apply your changes to the latest version and try again")


def invalid_object(kind: str, group: str, name: str, errors: list[FieldError]) -> StatusError:
    qk = f"{kind}.{group}" if group else kind
    if len(errors) == 1:
        msg = f'{qk} "{name}" is invalid: {errors[0]}'
    else:
        msg = f'{qk} "{name}" is invalid: [' + ", ".join(str(e) for e in errors) + "]"
    details: dict[str, Any] = {"name": name, "kind": kind, "causes": [e.cause() for e in errors]}
    if group:
        details["group"] = group
    return StatusError(422, "Invalid", msg, details)


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> StatusError:
    return StatusError(405, "MethodNotAllowed", message)


def gone(message: str) -> StatusError:
    return StatusError(410, "Expired", message)


def forbidden_error(message: str) -> StatusError:
    return StatusError(403, "Forbidden", message)


def unauthorized() -> StatusError:
    return StatusError(401, "Unauthorized", "Unauthorized")


def internal(message: str) -> StatusError:
    return StatusError(500, "InternalError", f"Internal error occurred: {message}")


def unsupported_media_type(ct: str) -> StatusError:
    return StatusError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                       f"accepted media types include: application/json, application/yaml, "
                       f"application/vnd.kubernetes.protobuf (got {ct})")
