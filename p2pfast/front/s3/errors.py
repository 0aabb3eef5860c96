"""S3 errors: what a request did wrong, as the S3 error document says it (code, HTTP status, message).

Only these leave the S3 layer as a response; anything else a handler raises is a bug, answered with 500
InternalError and logged. The codes and statuses are S3's own (the "Error responses" page of the S3 API
reference), since clients branch on them: boto3 raises ClientError with the code, rclone retries on 5xx
and 429 and on nothing else, restic's minio client treats NoSuchKey as "absent".
"""

from __future__ import annotations


class S3Error(Exception):
    """One S3 error response: `code` (S3's name), `status` (HTTP) and a message for people."""

    def __init__(self, code: str, status: int, message: str, **fields: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.fields = fields  # extra elements of the error document (BucketName, Key, ...)


def access_denied(message: str = "Access Denied") -> S3Error:
    return S3Error("AccessDenied", 403, message)


def signature_mismatch(message: str) -> S3Error:
    return S3Error("SignatureDoesNotMatch", 403, message)


def bad_request(message: str, code: str = "InvalidRequest") -> S3Error:
    return S3Error(code, 400, message)
