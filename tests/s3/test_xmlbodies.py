"""The XML request bodies the S3 server parses (xmldoc.py: CompleteMultipartUpload's and DeleteObjects'):
whatever the bytes (random, XML-ish trees with entities and attributes, DOCTYPEs with entity bombs and
external entities, deep nesting, odd part numbers, other encodings, mutated valid documents), a parse
returns its typed result or raises S3Error, nothing else; and a valid document built by a strategy, in
any of the forms XML allows for it (namespaces, CDATA, character references, comments, other encodings),
parses to exactly what was built."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfast.front.s3 import xmldoc
from p2pfast.front.s3.errors import S3Error
from p2pfast.front.s3.multipart import check_number

# Reaches no kernel: the pure pass would run the very code the compiled one ran (conftest.py).
pytestmark = pytest.mark.kernel_free

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Parts = list[tuple[int, str]]
Keys = tuple[list[str], bool]


# -- what the parsers may answer -------------------------------------------------------------------
def _complete(body: bytes) -> Parts | None:
    """complete_parts(body), checked for its type; None for S3Error (MalformedXML)."""
    try:
        parts = xmldoc.complete_parts(body)
    except S3Error as exc:
        assert (exc.code, exc.status) == ("MalformedXML", 400), (exc.code, exc.status)
        return None
    assert isinstance(parts, list) and parts
    for number, etag in parts:
        assert type(number) is int and 0 <= number <= 99999 and type(etag) is str
    return parts


def _delete(body: bytes) -> Keys | None:
    """delete_keys(body), checked for its type; None for S3Error (MalformedXML)."""
    try:
        keys, quiet = xmldoc.delete_keys(body)
    except S3Error as exc:
        assert (exc.code, exc.status) == ("MalformedXML", 400), (exc.code, exc.status)
        return None
    assert isinstance(keys, list) and len(keys) <= 1000 and type(quiet) is bool
    assert all(type(k) is str and k for k in keys)
    return keys, quiet


def _either(body: bytes) -> None:
    _complete(body)
    _delete(body)


# -- building blocks: characters, text in its XML forms, encodings ---------------------------------
def _xml_char(c: str) -> bool:
    o = ord(c)
    return o in (0x9, 0xA, 0xD) or 0x20 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or o >= 0x10000


SPECIAL = ["&", "<", ">", '"', "'", "\r", "\n", "\r\n", "\t", " ", "]]>", "\x85", "\u2028", "\ufeff", "é"]
xml_chars = st.one_of(st.characters(codec="utf-8").filter(_xml_char), st.sampled_from(SPECIAL))
xml_text = st.lists(xml_chars, max_size=24).map("".join)

# (Python codec, name in the XML declaration or None for none, bytes before it)
ENCODINGS: list[tuple[str, str | None, bytes]] = [
    ("utf-8", None, b""),
    ("utf-8", "UTF-8", b""),
    ("utf-8", "utf-8", b"\xef\xbb\xbf"),
    ("utf-16-le", "UTF-16", b"\xff\xfe"),
    ("utf-16-be", "UTF-16", b"\xfe\xff"),
    ("latin-1", "ISO-8859-1", b""),
    ("ascii", "US-ASCII", b""),
    ("cp1252", "windows-1252", b""),  # (not expat's own: pyexpat's unknown-encoding handler maps it)
]


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _refs(s: str, hexa: bool) -> str:
    return "".join(f"&#x{ord(c):X};" if hexa else f"&#{ord(c)};" for c in s)


@st.composite
def text_form(draw: st.DrawFn, s: str, codec: str) -> str:
    """`s` as element content: cut in pieces, each escaped, in CDATA or as character references, with
    comments and processing instructions between them (which the parser drops)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(s)), max_size=3)))
    pieces = [s[a:b] for a, b in zip([0, *cuts], [*cuts, len(s)], strict=True)]
    out = []
    for piece in pieces:
        form = draw(st.sampled_from(["escape", "cdata", "dec", "hex"]))
        cdata_ok = "]]>" not in piece and "\r" not in piece and _encodable(piece, codec)
        if form == "cdata" and cdata_ok and piece:
            out.append(f"<![CDATA[{piece}]]>")
        elif form in ("dec", "hex"):
            out.append(_refs(piece, form == "hex"))
        else:
            out.append(_escape(piece))
        out.append(draw(st.sampled_from(["", "", "<!-- a comment -->", "<?p2pfast test?>"])))
    return "".join(out)


def _encodable(s: str, codec: str) -> bool:
    try:
        s.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


PAD = st.sampled_from(["", " ", "\n", "\t", " \r\n "])
# (prefix, namespace declaration): S3's namespace, none, another, or S3's under a prefix
NAMESPACES = st.sampled_from(
    [
        ("", ""),
        ("", f' xmlns="{xmldoc.NS}"'),
        ("", ' xmlns="urn:other"'),
        ("s3:", f' xmlns:s3="{xmldoc.NS}"'),
    ]
)
attributes = st.lists(
    st.tuples(st.sampled_from(["a", "id", "Type", "xml:lang"]), xml_text),
    max_size=2,
    unique_by=lambda t: t[0],
).map(lambda pairs: "".join(f' {k}="{_escape(v).replace(chr(34), "&quot;")}"' for k, v in pairs))


@st.composite
def document(
    draw: st.DrawFn,
    root: str,
    children: list[str],
    ns: tuple[str, str],
    codec: str,
    decl: str | None,
    bom: bytes,
) -> bytes:
    prefix, xmlns = ns
    head = "" if decl is None else f'<?xml version="1.0" encoding="{decl}"?>' + draw(PAD)
    sep = draw(st.sampled_from(["", "\n", "<!-- between -->"]))
    body = f"<{prefix}{root}{xmlns}{draw(attributes)}>{sep}{sep.join(children)}{sep}</{prefix}{root}>"
    return bom + (head + body + draw(PAD)).encode(codec, "xmlcharrefreplace")


def _el(prefix: str, name: str, content: str) -> str:
    return f"<{prefix}{name}>{content}</{prefix}{name}>"


# -- valid documents and what they say -------------------------------------------------------------
etags = st.one_of(
    st.text("0123456789abcdef", min_size=32, max_size=32),
    st.builds("{}-{}".format, st.text("0123456789abcdef", min_size=32, max_size=32), st.integers(1, 10000)),
    xml_text.filter(lambda e: e == e.strip() and e == e.strip('"')),
)
EXTRA = ["ChecksumCRC32", "ChecksumSHA256", "Size", "LastModified"]


@st.composite
def complete_docs(draw: st.DrawFn) -> tuple[bytes, Parts]:
    codec, decl, bom = draw(st.sampled_from(ENCODINGS))
    ns = draw(NAMESPACES)
    prefix = ns[0]
    parts: Parts = draw(st.lists(st.tuples(st.integers(1, 10000), etags), min_size=1, max_size=8))
    rendered = []
    for number, etag in parts:
        width = draw(st.integers(len(str(number)), 5))
        quote = draw(st.sampled_from(["", '"', "&quot;", "&#34;"]))
        shown = draw(text_form(etag, codec))
        kids = [
            _el(prefix, "PartNumber", draw(PAD) + f"{number:0{width}d}" + draw(PAD)),
            _el(prefix, "ETag", draw(PAD) + quote + shown + quote + draw(PAD)),
        ]
        kids += [
            _el(prefix, name, _escape(draw(xml_text))) for name in draw(st.lists(st.sampled_from(EXTRA)))
        ]
        rendered.append(_el(prefix, "Part", draw(PAD).join(draw(st.permutations(kids)))))
    return draw(document("CompleteMultipartUpload", rendered, ns, codec, decl, bom)), parts


TRUE = st.sampled_from(["true", "True", "TRUE", " true\n"])
NOT_TRUE = st.sampled_from(["false", "False", "", " ", "1", "yes", "truee"])


@st.composite
def delete_docs(draw: st.DrawFn) -> tuple[bytes, Keys]:
    codec, decl, bom = draw(st.sampled_from(ENCODINGS))
    ns = draw(NAMESPACES)
    prefix = ns[0]
    keys: list[str] = draw(st.lists(xml_text.filter(bool), min_size=1, max_size=12))
    rendered = []
    for key in keys:
        kids = [_el(prefix, "Key", draw(text_form(key, codec)))]
        if draw(st.booleans()):
            kids.append(_el(prefix, "VersionId", _escape(draw(xml_text))))
        rendered.append(_el(prefix, "Object", "".join(draw(st.permutations(kids)))))
    quiet = draw(st.sampled_from([None, True, False]))
    if quiet is not None:
        shown = draw(TRUE if quiet else NOT_TRUE)
        rendered.insert(draw(st.integers(0, len(rendered))), _el(prefix, "Quiet", shown))
    return draw(document("Delete", rendered, ns, codec, decl, bom)), (keys, bool(quiet))


@ROUND
@given(complete_docs())
def test_complete_multipart_upload_round_trip(doc: tuple[bytes, Parts]) -> None:
    body, parts = doc
    assert xmldoc.complete_parts(body) == parts
    assert _delete(body) is None  # (not a Delete)


@ROUND
@given(delete_docs())
def test_delete_objects_round_trip(doc: tuple[bytes, Keys]) -> None:
    body, keys = doc
    assert xmldoc.delete_keys(body) == keys
    assert _complete(body) is None


def test_delete_objects_takes_1000_keys_and_no_more() -> None:
    def body(n: int) -> bytes:
        return (
            "<Delete>" + "".join(f"<Object><Key>k{i}</Key></Object>" for i in range(n)) + "</Delete>"
        ).encode()

    assert xmldoc.delete_keys(body(1000)) == ([f"k{i}" for i in range(1000)], False)
    with pytest.raises(S3Error) as exc:
        xmldoc.delete_keys(body(1001))
    assert exc.value.code == "MalformedXML"


@pytest.mark.parametrize(
    "body",
    [
        b"<CompleteMultipartUpload/>",  # no part
        b"<CompleteMultipartUpload><Part><ETag>x</ETag></Part></CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>100000</PartNumber><ETag>x</ETag></Part>"
        b"</CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>-1</PartNumber><ETag>x</ETag></Part>"
        b"</CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber>1 2</PartNumber><ETag>x</ETag></Part>"
        b"</CompleteMultipartUpload>",
    ],
)
def test_complete_multipart_upload_refusals(body: bytes) -> None:
    with pytest.raises(S3Error) as exc:
        xmldoc.complete_parts(body)
    assert exc.value.code == "MalformedXML"


# -- anything at all -------------------------------------------------------------------------------
NAMES = [
    "CompleteMultipartUpload",
    "Part",
    "PartNumber",
    "ETag",
    "Delete",
    "Object",
    "Key",
    "Quiet",
    "VersionId",
    "s3:Key",
    "x:Part",
    "a",
    "1bad",
    "",
]
REFS = [
    "&amp;",
    "&lt;",
    "&quot;",
    "&#0;",
    "&#65;",
    "&#x110000;",
    "&#xD800;",
    "&#xFFFE;",
    "&bogus;",
    "&",
    "&#;",
]
names = st.one_of(st.sampled_from(NAMES), st.text(max_size=4))
leaf = st.lists(
    st.one_of(st.text(max_size=8), st.sampled_from([*REFS, "<![CDATA[x]]>", "<!--", "]]>"])), max_size=5
).map("".join)


@st.composite
def element(draw: st.DrawFn, kids: st.SearchStrategy[str]) -> str:
    name = draw(names)
    closing = name if draw(st.integers(0, 9)) else draw(names)  # now and then mismatched
    attrs = "".join(f' {k}="{v}"' for k, v in draw(st.lists(st.tuples(names, leaf), max_size=2)))
    return f"<{name}{attrs}>{''.join(draw(st.lists(kids, max_size=4)))}</{closing}>"


xmlish = st.recursive(leaf, element, max_leaves=16)
PROLOGS = [
    "",
    '<?xml version="1.0"?>',
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>',
    '<?xml version="1.1"?>',
    '<?xml version="2.0"?>',
    "<?xml ?>",
    "\ufeff",
    "<!DOCTYPE Delete>",
    '<!DOCTYPE Delete SYSTEM "http://127.0.0.1:9/x.dtd">',
    '<!DOCTYPE Delete PUBLIC "-//x//y" "file:///etc/passwd">',
    '<!DOCTYPE Delete [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
    '<!DOCTYPE Delete [<!ENTITY e "x&e;">]>',
    '<!DOCTYPE Delete [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>',
    '<!DOCTYPE Delete [<!ELEMENT Delete ANY><!ATTLIST Key a CDATA "d">]>',
]
DECLARED = [
    "UTF-8",
    "utf-16",
    "UTF-16LE",
    "ISO-8859-1",
    "ascii",
    "cp932",
    "utf-7",
    "koi8-r",
    "punycode",
    "idna",
    "undefined",
    "hex",
    "rot13",
    "x-nope",
    "",
    "UTF-8 ",
]
CODECS = ["utf-8", "utf-16", "utf-16-be", "latin-1", "cp500", "utf-32"]


@st.composite
def xmlish_docs(draw: st.DrawFn) -> bytes:
    root = draw(st.sampled_from(["CompleteMultipartUpload", "Delete", "Part", "x"]))
    inner = "".join(draw(st.lists(xmlish, max_size=4)))
    text = draw(st.sampled_from(PROLOGS))
    if draw(st.booleans()):
        text = f'<?xml version="1.0" encoding="{draw(st.sampled_from(DECLARED))}"?>' + text
    text += f"<{root}>{inner}</{root}>" if draw(st.integers(0, 5)) else inner
    codec = draw(st.sampled_from(CODECS))
    return text.encode(codec, "surrogatepass" if codec.startswith("utf") else "xmlcharrefreplace")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid document, then a few bytes cut, inserted, replaced or the end truncated."""
    body = bytearray(draw(st.one_of(complete_docs(), delete_docs()))[0])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["cut", "insert", "replace", "truncate"]))
        if op == "cut":
            del body[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            body[at:at] = draw(
                st.one_of(st.binary(min_size=1, max_size=6), st.sampled_from([b"<", b"&", b"]]>"]))
            )
        elif op == "replace" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        else:
            del body[at:]
    return bytes(body)


ODD_NUMBERS = st.one_of(
    st.integers(-(10**30), 10**400).map(str),
    st.text(st.characters(categories=["Nd", "No", "Nl", "Zs"]), max_size=6),
    st.sampled_from(
        [
            "+1",
            "-1",
            "1e3",
            "0x10",
            "1_0",
            "\u0661",
            "²",
            "\U0001d7d9",
            "",
            " ",
            "00000",
            "000001",
            "\u0663\u0664",
            "1\u00a0",
        ]
    ),
)


@st.composite
def odd_part_numbers(draw: st.DrawFn) -> bytes:
    number = draw(ODD_NUMBERS)
    etag = draw(xml_text)
    part = f"<Part><PartNumber>{_escape(number)}</PartNumber><ETag>{_escape(etag)}</ETag></Part>"
    return f"<CompleteMultipartUpload>{part * draw(st.integers(1, 3))}</CompleteMultipartUpload>".encode()


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    """Elements nested up to 100,000 deep, inside a Part, an Object's Key or the root, maybe unclosed."""
    depth = draw(st.integers(1, 100_000))
    name = draw(st.sampled_from([b"a", b"Part", b"Key", b"Object"]))
    opening, closing = b"<" + name + b">", b"</" + name + b">"
    inner = opening * depth + (closing * depth if draw(st.integers(0, 4)) else b"")
    where = draw(st.sampled_from(["root", "part", "key"]))
    if where == "part":
        return (
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"
            + inner
            + b"</ETag></Part></CompleteMultipartUpload>"
        )
    if where == "key":
        return b"<Delete><Object><Key>k" + inner + b"</Key></Object></Delete>"
    return b"<Delete>" + inner + b"</Delete>"


@st.composite
def dtd_docs(draw: st.DrawFn) -> bytes:
    """Internal subsets: entity expansions (kept small here: the full bomb is its own test), external and
    parameter entities, recursion, entities holding markup, defaults for attributes."""
    levels, fanout = draw(st.integers(1, 5)), draw(st.integers(1, 10))
    laughs = '<!ENTITY l0 "lol">' + "".join(
        f'<!ENTITY l{i} "{f"&l{i - 1};" * fanout}">' for i in range(1, levels + 1)
    )
    subset = draw(
        st.sampled_from(
            [
                laughs,
                '<!ENTITY e SYSTEM "file:///etc/passwd">',
                '<!ENTITY e PUBLIC "-//x//y" "http://127.0.0.1:9/e">',
                '<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;',
                "<!ENTITY % q \"<!ENTITY k 'v'>\"> %q;",
                '<!ENTITY a "&b;"><!ENTITY b "&a;">',
                '<!ENTITY p "<Part><PartNumber>7</PartNumber><ETag>x</ETag></Part>">'
                '<!ENTITY o "<Object><Key>k</Key></Object>">',
                laughs + f'<!ATTLIST Key a CDATA "&l{levels};">',
                '<!ENTITY n "1"><!ENTITY t "true">',
                '<!ENTITY u SYSTEM "file:///etc/passwd" NDATA gif>',
            ]
        )
    )
    ref = draw(st.sampled_from([f"&l{levels};", "&e;", "&k;", "&a;", "&p;", "&o;", "&n;", "&t;", "&u;", ""]))
    root = draw(st.sampled_from(["Delete", "CompleteMultipartUpload"]))
    body = draw(
        st.sampled_from(
            [
                f"<Object><Key>{ref}</Key></Object><Quiet>{ref}</Quiet>",
                f"<Part><PartNumber>{ref}</PartNumber><ETag>{ref}</ETag></Part>",
                f"{ref}{ref}",
                f"<Object><Key a='{ref}'>k</Key></Object>",
            ]
        )
    )
    return f"<!DOCTYPE {root} [{subset}]><{root}>{body}</{root}>".encode()


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(body: bytes) -> None:
    _either(body)


@FUZZ
@given(xmlish_docs())
def test_xmlish_documents(body: bytes) -> None:
    _either(body)


@settings(FUZZ, max_examples=100)
@given(mutated())
def test_mutated_valid_documents(body: bytes) -> None:
    _either(body)


@settings(max_examples=100, deadline=None)
@given(odd_part_numbers())
def test_odd_part_numbers(body: bytes) -> None:
    _complete(body)


@settings(max_examples=25, deadline=None)
@given(deep())
def test_deep_nesting(body: bytes) -> None:
    _either(body)


@FUZZ
@given(dtd_docs())
def test_doctype_and_entities(body: bytes) -> None:
    _either(body)


# -- the attacks, each once, and the bugs found ----------------------------------------------------
def _laughs(levels: int, fanout: int) -> str:
    return '<!ENTITY l0 "lol">' + "".join(
        f'<!ENTITY l{i} "{f"&l{i - 1};" * fanout}">' for i in range(1, levels + 1)
    )


@pytest.mark.parametrize(
    "body",
    [
        # billion laughs: 3 * 10**9 characters from under 1 KB (expat refuses past its amplification limit)
        f"<!DOCTYPE Delete [{_laughs(9, 10)}]><Delete><Object><Key>&l9;</Key></Object></Delete>",
        # an external entity: never fetched nor read, an undefined entity to the parser
        '<!DOCTYPE Delete [<!ENTITY e SYSTEM "file:///etc/passwd">]><Delete><Object><Key>&e;</Key></Object>'
        "</Delete>",
        '<!DOCTYPE Delete [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><Delete><Object><Key>&k;</Key>'
        "</Object></Delete>",
        '<!DOCTYPE Delete [<!ENTITY a "&b;"><!ENTITY b "&a;">]><Delete><Object><Key>&a;</Key></Object>'
        "</Delete>",
    ],
)
def test_entity_attacks_are_malformed_xml(body: str) -> None:
    for parse in (xmldoc.delete_keys, xmldoc.complete_parts):
        with pytest.raises(S3Error) as exc:
            parse(body.encode())
        assert exc.value.code == "MalformedXML"


def test_an_external_dtd_is_not_fetched() -> None:
    body = (
        b'<!DOCTYPE Delete SYSTEM "http://127.0.0.1:9/x.dtd"><Delete><Object><Key>k</Key></Object></Delete>'
    )
    with pytest.raises(S3Error) as exc:  # refused (no S3 document has a DOCTYPE): nothing is fetched
        xmldoc.delete_keys(body)
    assert exc.value.code == "MalformedXML"


def test_an_unknown_encoding_is_malformed_xml() -> None:
    # LookupError: unknown encoding: x-nope (pyexpat's unknown-encoding handler); "hex", "rot13" and
    # other non-text codecs raise LookupError too
    with pytest.raises(S3Error):
        xmldoc.delete_keys(b'<?xml version="1.0" encoding="x-nope"?><Delete/>')


def test_a_part_number_of_other_digits_is_malformed_xml() -> None:
    # "²".isdigit() is true, int("²") raises ValueError: invalid literal for int() with base 10: '²'
    with pytest.raises(S3Error):
        xmldoc.complete_parts(
            "<CompleteMultipartUpload><Part><PartNumber>²</PartNumber><ETag>x</ETag></Part>"
            "</CompleteMultipartUpload>".encode()
        )
    for number in ("²", "\u0661", "\u1369"):  # UploadPart's ?partNumber= too (multipart.check_number)
        with pytest.raises(S3Error) as exc:
            check_number(number)
        assert exc.value.code == "InvalidArgument"


def test_entities_do_not_amplify_a_body() -> None:
    # 100 KB of entity and 95 references: a 0.1 MB body makes a 9.5 MB key (a 2 MiB body, the server's
    # cap, makes about 200 MB); expat's amplification limit is a factor of 100 past 8 MiB of output
    body = (
        b'<!DOCTYPE Delete [<!ENTITY a "'
        + b"x" * 100_000
        + b'">]><Delete><Object><Key>'
        + b"&a;" * 95
        + b"</Key></Object></Delete>"
    )
    try:
        keys, _ = xmldoc.delete_keys(body)
    except S3Error:
        return
    assert sum(map(len, keys)) <= len(body)
