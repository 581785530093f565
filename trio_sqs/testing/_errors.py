"""Errors the in-memory SQS answers with, in SQS's JSON protocol."""

from __future__ import annotations

__all__ = ["FakeError", "coral_error", "invalid_parameter", "missing_parameter"]


class FakeError(Exception):
    """An error answer: ``__type`` (the model's shape name), the query-compatible code SQS puts
    in ``x-amzn-query-error``, the message and the HTTP status.

    ``namespace`` is ``com.amazonaws.sqs`` for SQS's own errors and ``com.amazon.coral.service``
    for the generic ones of AWS's JSON protocol (unknown operation, malformed body, signatures).
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        *,
        query_code: str | None = None,
        status: int = 400,
        namespace: str = "com.amazonaws.sqs",
        sender_fault: bool = True,
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.query_code = query_code if query_code is not None else type_name
        self.status = status
        self.namespace = namespace
        self.sender_fault = sender_fault

    def body(self) -> dict[str, str]:
        return {"__type": f"{self.namespace}#{self.type_name}", "message": self.message}

    def headers(self) -> dict[str, str]:
        fault = "Sender" if self.sender_fault else "Receiver"
        return {"x-amzn-query-error": f"{self.query_code};{fault}"}

    def entry(self, entry_id: str) -> dict[str, object]:
        """This error as a failed entry of a batch answer."""
        return {
            "Id": entry_id,
            "SenderFault": self.sender_fault,
            "Code": self.query_code,
            "Message": self.message,
        }


def invalid_parameter(message: str) -> FakeError:
    return FakeError("InvalidParameterValue", message)


def missing_parameter(name: str) -> FakeError:
    return FakeError("MissingParameter", f"The request must contain the parameter {name}.")


def coral_error(type_name: str, message: str, status: int = 400) -> FakeError:
    """One of the generic errors of AWS's JSON protocol (``com.amazon.coral.service``):
    unknown operation, malformed body, authentication."""
    return FakeError(type_name, message, status=status, namespace="com.amazon.coral.service")
