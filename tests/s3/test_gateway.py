"""The S3 API through boto3, a client nobody here wrote, against two real node processes on loopback:
what a PUT through one node stores is read, listed and deleted through the other (docs/gateway.md)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import netnodes
import orjson
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from netnodes import NodeProc, make_nodes, wait_until
from nodetools import cli_argv, cli_env


@dataclass
class Net:
    nodes: list[NodeProc]
    addrs: list[str]
    akid: str
    secret: str
    gateways: list[str]

    def client(self, i: int, akid: str | None = None, secret: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=f"http://{self.addrs[i]}",
            aws_access_key_id=akid or self.akid,
            aws_secret_access_key=secret or self.secret,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",  # (boto3 presigns with SigV2 unless told: the node takes SigV4)
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=10,
            ),
        )


def _runtime(node: NodeProc) -> dict[str, str]:
    return dict(orjson.loads((node.root / "node.json").read_bytes()))


def _cli(node: NodeProc, *args: str) -> Any:
    out = subprocess.run(
        cli_argv(*args, "--data-dir", str(node.root)), env=cli_env(), capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    return orjson.loads(out.stdout) if "--json" in args else out.stdout.decode()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    nodes = make_nodes(tmp_path_factory.mktemp("s3"), 2)
    try:
        nodes[0].start("--s3-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0")
        nodes[1].start(
            "--s3-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0", "--bootstrap", nodes[0].listen
        )
        # these outlive each test (the module shares them): ended here, by PID, not by the per-test check
        for n in nodes:
            netnodes.STARTED.remove(n)
        wait_until(lambda: nodes[0].node_id in nodes[1].connected(), 20, "n1 connected to n0", nodes)
        wait_until(lambda: nodes[1].node_id in nodes[0].connected(), 20, "n0 connected to n1", nodes)
        addrs = [_runtime(n)["s3"] for n in nodes]
        key = _cli(nodes[0], "s3", "key", "create", "--json")
        yield Net(
            nodes,
            addrs,
            key["access_key_id"],
            key["secret_access_key"],
            [_runtime(n)["gateway"] for n in nodes],
        )
    finally:
        for n in nodes:
            n.kill()


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_put_through_one_node_get_list_head_through_the_other(net: Net) -> None:
    a, b = net.client(0), net.client(1)
    a.create_bucket(Bucket="photos")
    body = os.urandom(3 << 20)
    put = a.put_object(Bucket="photos", Key="2026/dec/cat.jpg", Body=body)
    md5 = hashlib.md5(body).hexdigest()
    assert put["ETag"] == f'"{md5}"'
    got = b.get_object(Bucket="photos", Key="2026/dec/cat.jpg")
    assert got["Body"].read() == body
    assert got["ETag"] == f'"{md5}"' and got["ContentLength"] == len(body)
    assert got["ContentType"] == "image/jpeg"
    head = b.head_object(Bucket="photos", Key="2026/dec/cat.jpg")
    assert head["ContentLength"] == len(body) and head["ETag"] == f'"{md5}"'
    assert head["Metadata"]["p2pfast-cid"].startswith("b3:")
    listed = b.list_objects_v2(Bucket="photos")
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listed["Contents"]] == [
        ("2026/dec/cat.jpg", len(body), f'"{md5}"')
    ]
    assert "photos" in [x["Name"] for x in b.list_buckets()["Buckets"]]
    # the same file for the CLI: BUCKET/KEY
    out = subprocess.run(
        cli_argv("get", "photos/2026/dec/cat.jpg", "--data-dir", str(net.nodes[1].root)),
        env=cli_env(),
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout == body


def test_ranges_and_conditional_gets(net: Net) -> None:
    a = net.client(0)
    a.create_bucket(Bucket="ranges")
    body = bytes(range(256)) * 40
    etag = a.put_object(Bucket="ranges", Key="r.bin", Body=body)["ETag"]
    for i in (0, 1):
        c = net.client(i)
        cases = {"bytes=0-9": body[:10], "bytes=-5": body[-5:], "bytes=10000-": body[10000:]}
        cases["bytes=100-99999"] = body[100:]
        for spec, want in cases.items():
            r = c.get_object(Bucket="ranges", Key="r.bin", Range=spec)
            assert r["Body"].read() == want, spec
            assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
            assert r["ContentRange"].endswith(f"/{len(body)}")
        with pytest.raises(ClientError) as exc:
            c.get_object(Bucket="ranges", Key="r.bin", Range=f"bytes={len(body)}-")
        assert _code(exc) == "InvalidRange"
        with pytest.raises(ClientError) as exc:
            c.get_object(Bucket="ranges", Key="r.bin", IfNoneMatch=etag)
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
        with pytest.raises(ClientError) as exc:
            c.get_object(Bucket="ranges", Key="r.bin", IfMatch='"0123"')
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        assert c.get_object(Bucket="ranges", Key="r.bin", IfMatch=etag)["Body"].read() == body


def test_listing_pages_prefixes_and_markers(net: Net) -> None:
    a, b = net.client(0), net.client(1)
    a.create_bucket(Bucket="tree")
    keys = ["a.txt", "d/1", "d/2", "d/e/3", "f/4", "g", "h h/ü+=~.bin"]
    for k in keys:
        a.put_object(Bucket="tree", Key=k, Body=k.encode())
    pages = b.get_paginator("list_objects_v2").paginate(Bucket="tree", PaginationConfig={"PageSize": 2})
    seen = [o["Key"] for p in pages for o in p.get("Contents", [])]
    assert seen == sorted(keys)
    top = b.list_objects_v2(Bucket="tree", Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["a.txt", "g"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["d/", "f/", "h h/"]
    # a page boundary on a common prefix: the next page goes on past the keys rolled into it
    rolled = b.get_paginator("list_objects_v2").paginate(
        Bucket="tree", Delimiter="/", PaginationConfig={"PageSize": 1}
    )
    names = [
        x
        for p in rolled
        for x in [o["Key"] for o in p.get("Contents", [])]
        + [q["Prefix"] for q in p.get("CommonPrefixes", [])]
    ]
    assert names == ["a.txt", "d/", "f/", "g", "h h/"]
    under = b.list_objects_v2(Bucket="tree", Prefix="d/", Delimiter="/")
    assert [o["Key"] for o in under["Contents"]] == ["d/1", "d/2"]
    assert [p["Prefix"] for p in under["CommonPrefixes"]] == ["d/e/"]
    after = b.list_objects_v2(Bucket="tree", StartAfter="d/2")
    assert [o["Key"] for o in after["Contents"]] == ["d/e/3", "f/4", "g", "h h/ü+=~.bin"]
    v1 = b.get_paginator("list_objects").paginate(
        Bucket="tree", Delimiter="/", PaginationConfig={"PageSize": 2}
    )
    got = [
        x
        for p in v1
        for x in [o["Key"] for o in p.get("Contents", [])]
        + [q["Prefix"] for q in p.get("CommonPrefixes", [])]
    ]
    assert (
        sorted(got) == ["a.txt", "d/", "f/", "g", "h h/"] and len(got) == 5
    )  # (per page: keys, then prefixes)
    assert b.get_object(Bucket="tree", Key="h h/ü+=~.bin")["Body"].read() == "h h/ü+=~.bin".encode()


def test_buckets_and_deletes_reach_the_other_node(net: Net) -> None:
    a, b = net.client(0), net.client(1)
    a.create_bucket(Bucket="scratch")
    with pytest.raises(ClientError) as exc:
        b.create_bucket(Bucket="scratch")
    assert _code(exc) == "BucketAlreadyOwnedByYou"
    b.head_bucket(Bucket="scratch")
    a.put_object(Bucket="scratch", Key="x", Body=b"x")
    with pytest.raises(ClientError) as exc:
        b.delete_bucket(Bucket="scratch")
    assert _code(exc) == "BucketNotEmpty"
    a.delete_object(Bucket="scratch", Key="x")
    with pytest.raises(ClientError) as exc:
        b.get_object(Bucket="scratch", Key="x")
    assert _code(exc) == "NoSuchKey"
    b.delete_bucket(Bucket="scratch")
    with pytest.raises(ClientError) as exc:
        a.head_bucket(Bucket="scratch")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as exc:
        a.put_object(Bucket="scratch", Key="y", Body=b"y")
    assert _code(exc) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        a.create_bucket(Bucket="Not_A_Bucket")
    assert _code(exc) == "InvalidBucketName"


def test_signatures_and_keys(net: Net) -> None:
    a = net.client(0)
    a.create_bucket(Bucket="auth")
    a.put_object(Bucket="auth", Key="k", Body=b"secret stuff")
    with pytest.raises(ClientError) as exc:
        net.client(1, secret="x" * 40).get_object(Bucket="auth", Key="k")
    assert _code(exc) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as exc:
        net.client(1, akid="P2PNOSUCHKEYATALL000").get_object(Bucket="auth", Key="k")
    assert _code(exc) == "InvalidAccessKeyId"
    # unsigned requests are refused
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(f"http://{net.addrs[1]}/auth/k", timeout=20)
    assert http.value.code == 403 and b"<Code>AccessDenied</Code>" in http.value.read()
    # presigned URLs, made with no network by boto3 (for one node: the host is signed)
    url = net.client(1).generate_presigned_url(
        "get_object", Params={"Bucket": "auth", "Key": "k"}, ExpiresIn=300
    )
    with urllib.request.urlopen(url, timeout=20) as r:
        assert r.read() == b"secret stuff"
    put_url = a.generate_presigned_url("put_object", Params={"Bucket": "auth", "Key": "up"}, ExpiresIn=300)
    req = urllib.request.Request(put_url, data=b"uploaded", method="PUT")
    with urllib.request.urlopen(req, timeout=20) as r:
        assert r.status == 200
    assert net.client(1).get_object(Bucket="auth", Key="up")["Body"].read() == b"uploaded"
    tampered = url.replace("auth/k", "auth/up")
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(tampered, timeout=20)
    assert http.value.code == 403 and b"SignatureDoesNotMatch" in http.value.read()


def test_a_key_made_on_one_member_works_on_the_other_and_a_deleted_key_nowhere(net: Net) -> None:
    made = _cli(net.nodes[1], "s3", "key", "create", "--json")
    akid, secret = made["access_key_id"], made["secret_access_key"]
    assert akid in _cli(net.nodes[0], "s3", "key", "list", "--json")["access_key_ids"]
    for i in (0, 1):
        net.client(i, akid, secret).list_buckets()
    _cli(net.nodes[0], "s3", "key", "delete", akid, "--json")

    def refused(i: int) -> bool:
        try:
            net.client(i, akid, secret).list_buckets()
        except ClientError as exc:
            return exc.response["Error"]["Code"] == "InvalidAccessKeyId"
        return False

    assert refused(0)  # at once where it was deleted
    wait_until(lambda: refused(1), 20, "the deleted key refused by the other member", net.nodes)
    assert akid not in _cli(net.nodes[1], "s3", "key", "list", "--json")["access_key_ids"]


def test_a_body_that_fails_its_hash_stores_nothing(net: Net, tmp_path: Path) -> None:
    a = net.client(0)
    a.create_bucket(Bucket="hashes")

    def corrupt(request: Any, **_: Any) -> None:
        request.body = b"the fake body"  # as long as the real one

    # changed after signing: the signature holds, but the body is not the one whose hash it signs
    a.meta.events.register("before-send.s3.PutObject", corrupt)
    with pytest.raises(ClientError) as exc:
        a.put_object(Bucket="hashes", Key="bad", Body=b"the real body")
    assert _code(exc) == "XAmzContentSHA256Mismatch"
    with pytest.raises(ClientError) as exc:
        net.client(1).head_object(Bucket="hashes", Key="bad")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    files = _cli(net.nodes[0], "files", "--json")
    assert "hashes/bad" not in [f["key"] for f in (files if isinstance(files, list) else files["rows"])]


def test_a_node_that_holds_no_copy_serves_it_from_the_holders(tmp_path: Path) -> None:
    """replicas = 1 among three nodes: one node holds no copy, and answers from the holders (one hop by
    the key's metadata, segments verified), ranges and ETag included."""
    from p2pfast.repo.repo import Repo

    nodes = make_nodes(tmp_path, 3)
    for n in nodes:
        (n.root / "config").write_text("replicas = 1\n")
    with netnodes.running(nodes):
        nodes[0].start("--s3-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0")
        for n in nodes[1:]:
            n.start(
                "--s3-listen",
                "127.0.0.1:0",
                "--gateway-listen",
                "127.0.0.1:0",
                "--bootstrap",
                nodes[0].listen,
            )
        ids = {n.node_id for n in nodes}
        for n in nodes:
            wait_until(lambda n=n: ids - {n.node_id} <= n.connected(), 20, "a full mesh", nodes)
        key = _cli(nodes[0], "s3", "key", "create", "--json")
        net = Net(
            nodes,
            [_runtime(n)["s3"] for n in nodes],
            key["access_key_id"],
            key["secret_access_key"],
            [_runtime(n)["gateway"] for n in nodes],
        )
        net.client(0).create_bucket(Bucket="far")
        body = os.urandom((9 << 20) + 12345)  # several segments
        net.client(0).put_object(Bucket="far", Key="big.bin", Body=body)

        def holds(n: NodeProc) -> bool:
            with Repo.open(n.layout.db, readonly=True) as repo:
                return any(r.key == b"far/big.bin" for r in repo.list_files())

        far = [i for i, n in enumerate(nodes) if not holds(n)]
        assert len(far) == 1, "replicas = 1: the storing node and one more hold it"
        c = net.client(far[0])
        md5 = f'"{hashlib.md5(body).hexdigest()}"'
        head = c.head_object(Bucket="far", Key="big.bin")
        assert head["ContentLength"] == len(body) and head["ETag"] == md5
        assert c.get_object(Bucket="far", Key="big.bin")["Body"].read() == body
        mid = c.get_object(Bucket="far", Key="big.bin", Range="bytes=5000000-5000099")["Body"].read()
        assert mid == body[5000000:5000100]
        assert c.get_object(Bucket="far", Key="big.bin", Range="bytes=-7")["Body"].read() == body[-7:]
        listed = c.list_objects_v2(Bucket="far")["Contents"]
        assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] == [("big.bin", len(body), md5)]
        # the HTTP gateway of the node with no copy, too (curl)
        gw = f"http://{net.gateways[far[0]]}"
        cid = head["Metadata"]["p2pfast-cid"]
        got = _curl(tmp_path, f"{gw}/b/far/big.bin")
        assert (got.status, got.body, got.headers["etag"]) == (200, body, f'"{cid}"')
        got = _curl(tmp_path, f"{gw}/cid/{cid}", "-r", "5000000-5000099")
        assert (got.status, got.body) == (206, body[5000000:5000100])
        assert not holds(nodes[far[0]])  # served, not copied


def test_multipart_uploads_complete_abort_and_list(net: Net) -> None:
    from boto3.s3.transfer import TransferConfig

    a, b = net.client(0), net.client(1)
    a.create_bucket(Bucket="multi")
    body = os.urandom((12 << 20) + 777)
    src = Path(net.nodes[0].root.parent / "multi.bin")
    src.write_bytes(body)
    # boto3's own multipart path: create, three parts at once, complete
    a.upload_file(
        str(src),
        "multi",
        "big.bin",
        Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20),
    )
    head = b.head_object(Bucket="multi", Key="big.bin")
    assert head["ContentLength"] == len(body)
    assert b.get_object(Bucket="multi", Key="big.bin")["Body"].read() == body
    parts = [body[i : i + (5 << 20)] for i in range(0, len(body), 5 << 20)]
    want = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"
    assert a.head_object(Bucket="multi", Key="big.bin")["ETag"] == f'"{want}"'
    assert b.head_object(Bucket="multi", Key="big.bin")["ETag"] == f'"{want}"'  # (its attributes file)
    # the parts are gone once the object is stored, from both nodes
    for n in net.nodes:
        assert not [k for k in _cli(n, "files", "--json") if "/uploads/" in k["key"]]

    # by hand: parts through both nodes, listed, then one upload completed and one aborted
    up = a.create_multipart_upload(Bucket="multi", Key="by-hand")["UploadId"]
    e1 = a.upload_part(Bucket="multi", Key="by-hand", UploadId=up, PartNumber=1, Body=parts[0])["ETag"]
    e2 = b.upload_part(Bucket="multi", Key="by-hand", UploadId=up, PartNumber=2, Body=b"tail")["ETag"]
    listed = b.list_parts(Bucket="multi", Key="by-hand", UploadId=up)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [(1, e1, 5 << 20), (2, e2, 4)]
    # each part is kept by the node it went through, only (a scratch file: not replicated)
    held = [{k["key"] for k in _cli(n, "files", "--json") if f"{up}/" in k["key"]} for n in net.nodes]
    assert held == [{f".scratch/s3/uploads/{up}/00001"}, {f".scratch/s3/uploads/{up}/00002"}], held
    other = b.create_multipart_upload(Bucket="multi", Key="dropped")["UploadId"]
    ups = a.list_multipart_uploads(Bucket="multi")["Uploads"]
    assert sorted((u["Key"], u["UploadId"]) for u in ups) == [("by-hand", up), ("dropped", other)]
    with pytest.raises(ClientError) as exc:
        a.complete_multipart_upload(
            Bucket="multi",
            Key="by-hand",
            UploadId=up,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e2}, {"PartNumber": 2, "ETag": e2}]},
        )
    assert _code(exc) == "InvalidPart"
    p1, p2 = {"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}
    with pytest.raises(ClientError) as exc:
        a.complete_multipart_upload(
            Bucket="multi", Key="by-hand", UploadId=up, MultipartUpload={"Parts": [p2, p1]}
        )
    assert _code(exc) == "InvalidPartOrder"
    e3 = a.upload_part(Bucket="multi", Key="by-hand", UploadId=up, PartNumber=3, Body=b"x")["ETag"]
    with pytest.raises(ClientError) as exc:  # part 2 is under 5 MiB and not the last
        a.complete_multipart_upload(
            Bucket="multi",
            Key="by-hand",
            UploadId=up,
            MultipartUpload={"Parts": [p1, p2, {"PartNumber": 3, "ETag": e3}]},
        )
    assert _code(exc) == "EntityTooSmall"
    b.complete_multipart_upload(
        Bucket="multi",
        Key="by-hand",
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
    )
    assert a.get_object(Bucket="multi", Key="by-hand")["Body"].read() == parts[0] + b"tail"
    for n in net.nodes:  # the object is replicated as any store; the parts are gone
        keys = {k["key"] for k in _cli(n, "files", "--json")}
        assert "multi/by-hand" in keys and not {k for k in keys if up in k}, keys
    a.abort_multipart_upload(Bucket="multi", Key="dropped", UploadId=other)
    with pytest.raises(ClientError) as exc:
        b.upload_part(Bucket="multi", Key="dropped", UploadId=other, PartNumber=1, Body=b"late")
    assert _code(exc) == "NoSuchUpload"
    assert a.list_multipart_uploads(Bucket="multi").get("Uploads", []) == []


def test_upload_part_copy_whole_and_ranged(net: Net) -> None:
    """UploadPartCopy through the node that does not hold the source's upload: parts copied from an
    object (a range of it, then the whole of another), completed into one object, read back."""
    a, b = net.client(0), net.client(1)
    a.create_bucket(Bucket="copies")
    src = os.urandom((11 << 20) + 5)
    a.put_object(Bucket="copies", Key="src.bin", Body=src)
    a.put_object(Bucket="copies", Key="tail.bin", Body=b"the tail")
    up = b.create_multipart_upload(Bucket="copies", Key="joined")["UploadId"]
    first = b.upload_part_copy(
        Bucket="copies",
        Key="joined",
        UploadId=up,
        PartNumber=1,
        CopySource={"Bucket": "copies", "Key": "src.bin"},
        CopySourceRange="bytes=1000-6243879",
    )["CopyPartResult"]
    want = src[1000:6243880]
    assert first["ETag"] == f'"{hashlib.md5(want).hexdigest()}"'
    second = b.upload_part_copy(
        Bucket="copies", Key="joined", UploadId=up, PartNumber=2, CopySource="copies/tail.bin"
    )["CopyPartResult"]
    parts = [{"PartNumber": 1, "ETag": first["ETag"]}, {"PartNumber": 2, "ETag": second["ETag"]}]
    b.complete_multipart_upload(Bucket="copies", Key="joined", UploadId=up, MultipartUpload={"Parts": parts})
    assert a.get_object(Bucket="copies", Key="joined")["Body"].read() == want + b"the tail"
    up2 = a.create_multipart_upload(Bucket="copies", Key="bad")["UploadId"]
    for source, spec, code in (
        ("copies/nope", None, "NoSuchKey"),
        ("copies/src.bin", f"bytes=0-{len(src)}", "InvalidRange"),
        ("copies/src.bin", "bytes=9-3", "InvalidArgument"),
        ("copies/src.bin", "bytes=5-", "InvalidArgument"),
    ):
        extra = {} if spec is None else {"CopySourceRange": spec}
        with pytest.raises(ClientError) as exc:
            a.upload_part_copy(
                Bucket="copies", Key="bad", UploadId=up2, PartNumber=1, CopySource=source, **extra
            )
        assert _code(exc) == code, (source, spec)
    a.abort_multipart_upload(Bucket="copies", Key="bad", UploadId=up2)


def test_delete_objects(net: Net) -> None:
    a, b = net.client(0), net.client(1)
    a.create_bucket(Bucket="many")
    for i in range(5):
        a.put_object(Bucket="many", Key=f"k{i}", Body=b"%d" % i)
    r = b.delete_objects(Bucket="many", Delete={"Objects": [{"Key": f"k{i}"} for i in (0, 1, 2, 9)]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["k0", "k1", "k2", "k9"] and not r.get("Errors")
    assert [o["Key"] for o in a.list_objects_v2(Bucket="many")["Contents"]] == ["k3", "k4"]


def test_aws_cli_cp_sync_and_rm(net: Net, tmp_path: Path) -> None:
    """The aws CLI, as a user runs it: a tree synced up and back, a 200 MiB file in parts, a copy within
    the network in parts, a recursive rm."""
    import shutil

    aws = shutil.which("aws", path=str(Path(sys.executable).parent))
    assert aws is not None, "awscli is a test dependency (pip install '.[test]')"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": net.akid,
        "AWS_SECRET_ACCESS_KEY": net.secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "HOME": str(tmp_path),
    }

    def run(i: int, *args: str) -> str:
        out = subprocess.run(
            [aws, "--endpoint-url", f"http://{net.addrs[i]}", *args],
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        return out.stdout.decode()

    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    for i in range(1, 4):
        (tree / f"f{i}").write_bytes(os.urandom(i * 100_000))
    (tree / "a" / "b" / "x y.txt").write_text("hi\n")
    run(0, "s3", "mb", "s3://cli")
    run(0, "s3", "sync", str(tree), "s3://cli/t")
    back = tmp_path / "back"
    run(1, "s3", "sync", "s3://cli/t", str(back))
    assert sorted(p.relative_to(back).as_posix() for p in back.rglob("*") if p.is_file()) == [
        "a/b/x y.txt",
        "f1",
        "f2",
        "f3",
    ]
    assert all((back / p).read_bytes() == (tree / p).read_bytes() for p in ("f1", "f2", "f3", "a/b/x y.txt"))
    assert "upload:" not in run(0, "s3", "sync", str(tree), "s3://cli/t")  # nothing changed: nothing sent
    big = tmp_path / "big"
    with big.open("wb") as f:  # 200 MiB, over the CLI's 8 MiB threshold: a multipart upload of 25 parts
        for _ in range(200):
            f.write(os.urandom(1 << 20))
    run(0, "s3", "cp", str(big), "s3://cli/big")
    run(1, "s3", "cp", "s3://cli/big", str(tmp_path / "big.back"))
    assert _same_file(tmp_path / "big.back", big)
    # a copy within the network: over 8 MiB, the CLI copies it in parts (UploadPartCopy)
    mid = tmp_path / "mid"
    mid.write_bytes(os.urandom(20 << 20))
    run(0, "s3", "cp", str(mid), "s3://cli/mid")
    run(1, "s3", "cp", "s3://cli/mid", "s3://cli/mid-copy")
    run(0, "s3", "cp", "s3://cli/mid-copy", str(tmp_path / "copy.back"))
    assert (tmp_path / "copy.back").read_bytes() == mid.read_bytes()
    run(1, "s3", "rm", "--recursive", "s3://cli/")
    assert run(0, "s3", "ls", "--recursive", "s3://cli") == ""


def test_metadata_content_type_and_copies_are_kept_network_wide(net: Net) -> None:
    a, b = net.client(0), net.client(1)
    a.create_bucket(Bucket="meta")
    a.put_object(
        Bucket="meta",
        Key="doc",
        Body=b"<p>hi</p>",
        ContentType="text/html",
        Metadata={"mtime": "1700000000.5", "Owner": "me"},
        ContentDisposition="inline",
    )
    head = b.head_object(Bucket="meta", Key="doc")
    assert head["ContentType"] == "text/html" and head["ContentDisposition"] == "inline"
    assert head["Metadata"]["mtime"] == "1700000000.5" and head["Metadata"]["owner"] == "me"
    modified = head["LastModified"]
    assert a.head_object(Bucket="meta", Key="doc")["LastModified"] == modified  # one time, every node
    # a copy keeps them; a copy onto itself with REPLACE changes them without moving the bytes
    b.copy_object(Bucket="meta", Key="copy", CopySource={"Bucket": "meta", "Key": "doc"})
    assert a.get_object(Bucket="meta", Key="copy")["Body"].read() == b"<p>hi</p>"
    assert a.head_object(Bucket="meta", Key="copy")["Metadata"]["owner"] == "me"
    a.copy_object(
        Bucket="meta",
        Key="doc",
        CopySource={"Bucket": "meta", "Key": "doc"},
        Metadata={"mtime": "1800000000"},
        MetadataDirective="REPLACE",
    )
    head = b.head_object(Bucket="meta", Key="doc")
    assert head["Metadata"] == {"mtime": "1800000000", "p2pfast-cid": head["Metadata"]["p2pfast-cid"]}
    assert head["ContentType"] == "binary/octet-stream"
    with pytest.raises(ClientError) as exc:
        a.copy_object(Bucket="meta", Key="doc", CopySource={"Bucket": "meta", "Key": "doc"})
    assert _code(exc) == "InvalidRequest"
    # the same bytes stored again with no metadata: none is left over
    a.put_object(Bucket="meta", Key="doc", Body=b"<p>hi</p>")
    assert set(b.head_object(Bucket="meta", Key="doc")["Metadata"]) == {"p2pfast-cid"}
    with pytest.raises(ClientError) as exc:
        a.put_object(Bucket="meta", Key="big-meta", Body=b"x", Metadata={"m": "v" * 3000})
    assert _code(exc) == "MetadataTooLarge"


def _same_file(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes, compared a MiB at a time."""
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _tool(name: str) -> str:
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install {name})"
        # .ci/run installs it, so a CI run without it is a broken setup, not a reason to skip.
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so this test may not skip")
        pytest.skip(message)
    return path


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The tool's environment: no AWS settings of this machine's (an AWS_CA_BUNDLE makes rclone refuse
    a plain-HTTP endpoint), a HOME of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_", "RESTIC_"))}
    return {**env, "HOME": str(tmp_path), **extra}


def _tree(root: Path) -> dict[str, bytes]:
    (root / "a" / "b").mkdir(parents=True)
    files = {f"f{i}": os.urandom(i * 150_000) for i in range(1, 4)}
    files |= {"a/b/x y.txt": b"hi\n", "a/ü+=~.txt": b"odd name\n", "empty": b""}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_rclone_copy_check_sync(net: Net, tmp_path: Path) -> None:
    rclone = _tool("rclone")
    env = _clean_env(
        tmp_path,
        RCLONE_CONFIG=str(tmp_path / "rclone.conf"),
        RCLONE_CONFIG_P2P_TYPE="s3",
        RCLONE_CONFIG_P2P_PROVIDER="Other",
        RCLONE_CONFIG_P2P_ENDPOINT=f"http://{net.addrs[0]}",
        RCLONE_CONFIG_P2P_ACCESS_KEY_ID=net.akid,
        RCLONE_CONFIG_P2P_SECRET_ACCESS_KEY=net.secret,
        RCLONE_CONFIG_OTHER_TYPE="s3",
        RCLONE_CONFIG_OTHER_PROVIDER="Other",
        RCLONE_CONFIG_OTHER_ENDPOINT=f"http://{net.addrs[1]}",
        RCLONE_CONFIG_OTHER_ACCESS_KEY_ID=net.akid,
        RCLONE_CONFIG_OTHER_SECRET_ACCESS_KEY=net.secret,
    )

    def run(*args: str) -> str:
        out = subprocess.run([rclone, *args], env=env, capture_output=True, timeout=180)
        assert out.returncode == 0, out.stderr.decode()[-3000:]
        return out.stderr.decode()

    src = tmp_path / "src"
    files = _tree(src)
    (src / "big").write_bytes(os.urandom(12 << 20))
    files["big"] = (src / "big").read_bytes()
    # a small upload cutoff: the big file goes up in parts (rclone's own multipart path)
    run("copy", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", str(src), "p2p:rclone/t")
    run("check", str(src), "other:rclone/t")  # through the other node: sizes and MD5s
    (src / "f1").write_bytes(b"changed")
    (src / "f2").unlink()
    files["f1"] = b"changed"
    del files["f2"]
    run("sync", str(src), "p2p:rclone/t")
    run("sync", str(src), "p2p:rclone/t")  # again: nothing to do, and no error setting times
    run("check", str(src), "other:rclone/t")
    back = tmp_path / "back"
    run("copy", "other:rclone/t", str(back))
    assert _read_tree(back) == files


def test_restic_init_backup_check_restore(net: Net, tmp_path: Path) -> None:
    restic = _tool("restic")
    env = _clean_env(
        tmp_path,
        AWS_ACCESS_KEY_ID=net.akid,
        AWS_SECRET_ACCESS_KEY=net.secret,
        RESTIC_PASSWORD="correct horse",
        RESTIC_CACHE_DIR=str(tmp_path / "cache"),
    )

    def run(node: int, *args: str) -> str:
        repo = f"s3:http://{net.addrs[node]}/restic-backups"
        out = subprocess.run([restic, "-r", repo, *args], env=env, capture_output=True, timeout=180)
        assert out.returncode == 0, out.stderr.decode()[-3000:]
        return out.stdout.decode()

    src = tmp_path / "src"
    files = _tree(src)
    (src / "big").write_bytes(os.urandom(20 << 20))  # packs of several MiB
    files["big"] = (src / "big").read_bytes()
    run(0, "init")
    run(0, "backup", str(src))
    run(1, "check", "--read-data")  # every pack read back through the other node
    run(1, "restore", "latest", "--target", str(tmp_path / "restored"))
    assert _read_tree(tmp_path / "restored" / src.relative_to("/")) == files


# -- the read-only HTTP gateway (front/gateway.py), through curl -----------------------------------------


@dataclass
class Fetched:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes
    exit: int  # curl's exit status (18: the body ended short of its Content-Length)


def _curl(tmp_path: Path, url: str, *args: str) -> Fetched:
    head, out = tmp_path / "curl.head", tmp_path / "curl.body"
    for p in (head, out):
        p.unlink(missing_ok=True)
    argv = [_tool("curl"), "-sS", "--noproxy", "*", "--max-time", "60", "-D", str(head), "-o", str(out)]
    done = subprocess.run([*argv, *args, url], capture_output=True, timeout=90)
    lines = head.read_text().splitlines() if head.exists() else []
    assert lines, f"curl got no answer (exit {done.returncode}): {done.stderr.decode()}"
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = out.read_bytes() if out.exists() else b""
    return Fetched(int(lines[0].split()[1]), headers, body, done.returncode)


def test_the_http_gateway_serves_files_and_content_ids_to_curl(net: Net, tmp_path: Path) -> None:
    """A page PUT through S3 on one node, read with curl from both gateways: by name and by content id,
    whole, HEAD, ranges (suffix, open, past the end), conditionals; anything else refused in one line."""
    net.client(0).create_bucket(Bucket="web")
    body = b"<html><body>" + os.urandom(700_000).hex().encode() + b"</body></html>"
    net.client(0).put_object(
        Bucket="web", Key="site/index.html", Body=body, ContentType="text/html; charset=utf-8"
    )
    cid = net.client(1).head_object(Bucket="web", Key="site/index.html")["Metadata"]["p2pfast-cid"]
    n = len(body)
    for gw in (f"http://{g}" for g in net.gateways):
        page = _curl(tmp_path, f"{gw}/b/web/site/index.html")
        assert (page.status, page.body, page.exit) == (200, body, 0)
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["etag"] == f'"{cid}"' and page.headers["content-length"] == str(n)
        assert page.headers["accept-ranges"] == "bytes" and "last-modified" in page.headers
        raw = _curl(tmp_path, f"{gw}/cid/{cid}")
        assert (raw.status, raw.body) == (200, body)
        assert raw.headers["content-type"] == "application/octet-stream"
        assert "immutable" in raw.headers["cache-control"]
        head = _curl(tmp_path, f"{gw}/cid/{cid}", "-I")
        assert (head.status, head.headers["content-length"]) == (200, str(n))
        assert head.body.endswith(b"\r\n\r\n")  # (with -I, curl writes the headers there: no byte more)
        for spec, want in {"10-19": body[10:20], "-5": body[-5:], f"{n - 100}-": body[-100:]}.items():
            part = _curl(tmp_path, f"{gw}/b/web/site/index.html", "-r", spec)
            assert (part.status, part.body) == (206, want), spec
            first = n - len(want) if spec[0] in "-" or spec.endswith("-") else 10
            assert part.headers["content-range"] == f"bytes {first}-{first + len(want) - 1}/{n}"
        past = _curl(tmp_path, f"{gw}/cid/{cid}", "-r", f"{n}-")
        assert past.status == 416 and past.headers["content-range"] == f"bytes */{n}"
        assert _curl(tmp_path, f"{gw}/cid/{cid}", "-H", f'If-None-Match: "{cid}"').status == 304
        assert _curl(tmp_path, f"{gw}/cid/{cid}", "-H", 'If-None-Match: "b3:other"').status == 200
        since = page.headers["last-modified"]
        cond = _curl(tmp_path, f"{gw}/b/web/site/index.html", "-H", f"If-Modified-Since: {since}")
        assert (cond.status, cond.body) == (304, b"")
        old = "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT"
        assert _curl(tmp_path, f"{gw}/b/web/site/index.html", "-H", old).body == body
        # read-only; unknown names and content ids are 404 with one line; the node's own files (access
        # keys: .s3/keys/AKID) are not a bucket's, so never served
        refused = {
            ("-X", "PUT", f"{gw}/b/web/site/index.html"): 405,
            ("-X", "DELETE", f"{gw}/cid/{cid}"): 405,
            (f"{gw}/b/web/site/nope.html",): 404,
            (f"{gw}/cid/b3:{'0' * 64}",): 404,
            (f"{gw}/cid/{cid[:-1]}",): 404,
            (f"{gw}/ipfs/{cid}",): 404,
            (f"{gw}/b/.s3/keys/{net.akid}",): 404,
            (f"{gw}/b/%2Es3/keys/{net.akid}",): 404,
        }
        for args, status in refused.items():
            got = _curl(tmp_path, args[-1], *args[:-1])
            assert got.status == status, (args, got)
            assert got.body.count(b"\n") == 1 and net.secret.encode() not in got.body, got.body


def test_the_gateway_sends_only_verified_bytes_and_says_when_it_stops(tmp_path: Path) -> None:
    """One node, one bit flipped in its only copy, past the first segment: the response has the
    object's Content-Length, the bytes before the bad segment, then stops short (curl exit 18) with a
    log line; never the flipped bytes, never a silent truncation."""
    from nodetools import object_files

    (node,) = make_nodes(tmp_path, 1)
    with netnodes.running([node]):
        node.start("--gateway-listen", "127.0.0.1:0")
        body = os.urandom(9 << 20)
        src = tmp_path / "big.bin"
        src.write_bytes(body)
        _cli(node, "store", "files/big.bin", str(src))
        (rel,) = object_files(node.root)
        path = node.root / rel
        with open(path, "r+b") as f:
            f.seek(path.stat().st_size * 2 // 3)
            byte = f.read(1)[0]
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte ^ 0x10]))
        gw = f"http://{_runtime(node)['gateway']}"
        got = _curl(tmp_path, f"{gw}/b/files/big.bin")
        assert got.status == 200 and got.headers["content-length"] == str(len(body))
        assert got.exit == 18, got  # "transfer closed with N bytes remaining"
        assert len(got.body) < len(body) and got.body == body[: len(got.body)]
        wait_until(lambda: "event=gateway_get_failed" in node.log(), 10, "the gateway's log line", [node])
        # a range that lies before the bad segment is whole
        first = _curl(tmp_path, f"{gw}/b/files/big.bin", "-r", "0-99999")
        assert (first.status, first.body, first.exit) == (206, body[:100000], 0)
