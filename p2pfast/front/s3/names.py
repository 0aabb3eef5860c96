"""Where S3's names land in the p2pfast key space (docs/gateway.md, "Names"), in one place.

* Object KEY in bucket BUCKET is the file `BUCKET/KEY`: `p2pfast files`, `get` and `delete` see the
  same objects as the S3 API, and `p2pfast store BUCKET/KEY` puts one there. A bucket name never holds
  a "/", so the first "/" splits the two without ambiguity.
* Bucket BUCKET exists while the empty file `BUCKET/` does: it is stored, replicated, listed and
  deleted (with its tombstone reaching every member) like any file, so every member knows the buckets
  with no table of its own. S3 has no object named "" (a key is 1 to 1024 bytes), so `BUCKET/` is
  never an object.
* An access key AKID is the file `.s3/keys/AKID`, whose content is the secret (key.py). No bucket name
  starts with ".", so no S3 object shares that prefix.
* An object's S3 attributes (Content-Type, x-amz-meta-*, its ETag) are the file `.s3/m/BUCKET/KEY`
  when it has any beyond the defaults (attrs.py).
* A multipart upload ID is the file `.s3/uploads/ID` (which bucket and key it is for) and its parts the
  scratch files `.scratch/s3/uploads/ID/NNNNN` (store/userkey.py: kept by the member they went through,
  not replicated), until CompleteMultipartUpload stores the object and deletes them (multipart.py).
"""

from __future__ import annotations

import re

from p2pfast.front.s3.errors import S3Error
from p2pfast.store.userkey import MAX_KEY_BYTES, SCRATCH_PREFIX

KEYS_PREFIX = ".s3/keys/"
UPLOADS_PREFIX = ".s3/uploads/"
PARTS_PREFIX = SCRATCH_PREFIX + "s3/uploads/"
ATTRS_PREFIX = ".s3/m/"

# S3's rules for new buckets (the "Bucket naming rules" page): 3-63 characters of lowercase letters,
# digits, dots and hyphens, beginning and ending with a letter or digit, no "..", not an IPv4 address.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")


def check_bucket(name: str) -> str:
    if not _BUCKET.fullmatch(name) or ".." in name or _IPV4.fullmatch(name):
        raise S3Error(
            "InvalidBucketName",
            400,
            "bucket names are 3-63 lowercase letters, digits, dots and hyphens, beginning and ending "
            "with a letter or digit",
            BucketName=name[:80],
        )
    return name


def bucket_file(bucket: str) -> str:
    """The file that says `bucket` exists."""
    return f"{bucket}/"


def object_file(bucket: str, key: str) -> str:
    """The file object `key` of `bucket` is stored as; KeyTooLongError when it would not fit a file key."""
    if not key:
        raise S3Error("InvalidArgument", 400, "an object key is 1 to 1024 bytes")
    # room for the attributes' file too (attrs.py), whose name is longer by ATTRS_PREFIX
    room = MAX_KEY_BYTES - len(ATTRS_PREFIX) - len(bucket) - 1
    if len(key.encode("utf-8", "surrogatepass")) > room:
        raise S3Error(
            "KeyTooLongError",
            400,
            f"in bucket {bucket} an object key may be {room} bytes at most (file keys are 1024 bytes, "
            f"and the object's attributes are the file {ATTRS_PREFIX}BUCKET/KEY)",
        )
    return f"{bucket}/{key}"


def split_file(name: str) -> tuple[str, str] | None:
    """(bucket, object key) of file `name`, or None when it is no bucket's object (a marker, an access
    key, a file stored with no '/' or under a name S3 would not take as a bucket)."""
    bucket, sep, key = name.partition("/")
    if not sep or not key or not _BUCKET.fullmatch(bucket):
        return None
    return bucket, key


def key_file(access_key_id: str) -> str:
    return KEYS_PREFIX + access_key_id


def upload_file(upload_id: str) -> str:
    return UPLOADS_PREFIX + upload_id


def parts_prefix(upload_id: str) -> str:
    """What the names of an upload's parts begin with."""
    return f"{PARTS_PREFIX}{upload_id}/"


def part_file(upload_id: str, part: int) -> str:
    return f"{parts_prefix(upload_id)}{part:05d}"


def attrs_file(bucket: str, key: str) -> str:
    return f"{ATTRS_PREFIX}{bucket}/{key}"
