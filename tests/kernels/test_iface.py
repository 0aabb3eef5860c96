"""The compiled kernels and their pure twins expose the same names and signatures (frozenlist test_iface).

Cython signatures come from `embedsignature`. inspect.signature reads them from cyfunctions; where it cannot
(a cdef class, whose __init__ is a slot wrapper), the signature is parsed from `__text_signature__` or from
the docstring's first line, "name(params)", with any C types before a parameter name dropped. Parameter
names, kinds and defaults (as source text) must be identical; annotations are the pure twin's alone.
"""

from __future__ import annotations

import ast
import inspect
from types import ModuleType

import pytest

KERNELS = ("shard", "pump", "frames")
# how to make an instance of each public class, to check that its properties are read-only
SAMPLES = {
    "Pump": lambda cls: cls(1),
    "FrameParser": lambda cls: cls(),
    "Frame": lambda cls: cls(3, 0, 1, memoryview(b"")),
}
# Imported for annotations by a pure twin; not part of its API.
TYPING_NAMES = {"TYPE_CHECKING", "Any", "Callable", "Iterable"}
ParamSpec = list[tuple[str, str, str | None]]  # (name, kind, default source)


def _split_params(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def _from_text(text: str) -> ParamSpec:
    """Parse "name(a, int b=2, *, c=()) -> T" (embedsignature's first docstring line) into a ParamSpec."""
    inner = text[text.index("(") + 1 : text.rindex(")")]
    cleaned = []
    for param in _split_params(inner):
        head, eq, default = param.partition("=")
        head = head.split(":")[0].split()[-1]  # drop a C type before the name and any annotation after it
        cleaned.append(head + (eq + default if eq else ""))
    fn = ast.parse(f"def f({', '.join(cleaned)}): pass").body[0]
    assert isinstance(fn, ast.FunctionDef)
    args = fn.args
    spec: ParamSpec = []
    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for i, (a, d) in enumerate(zip(positional, defaults, strict=True)):
        kind = "POSITIONAL_ONLY" if i < len(args.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        spec.append((a.arg, kind, None if d is None else ast.unparse(d)))
    if args.vararg:
        spec.append((args.vararg.arg, "VAR_POSITIONAL", None))
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        spec.append((a.arg, "KEYWORD_ONLY", None if d is None else ast.unparse(d)))
    if args.kwarg:
        spec.append((args.kwarg.arg, "VAR_KEYWORD", None))
    return [p for p in spec if p[0] != "self"]


def _from_signature(sig: inspect.Signature) -> ParamSpec:
    return [
        (
            p.name,
            p.kind.name,
            None if p.default is inspect.Parameter.empty else ast.unparse(ast.parse(repr(p.default))),
        )
        for p in sig.parameters.values()
        if p.name != "self"
    ]


def param_spec(obj: object) -> ParamSpec:
    try:
        return _from_signature(inspect.signature(obj))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        pass
    text = getattr(obj, "__text_signature__", None)
    if text:
        return _from_text(text.replace("$", ""))
    doc = getattr(obj, "__doc__", None) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    name = getattr(obj, "__name__", "")
    if not first.split("(")[0].endswith(name) or "(" not in first:
        raise AssertionError(f"no signature for {obj!r}: build with embedsignature=True")
    return _from_text(first)


def class_spec(cls: type) -> ParamSpec:
    """The constructor's parameters: from the class (its docstring carries __init__'s signature in Cython)."""
    try:
        return _from_signature(inspect.signature(cls))
    except (ValueError, TypeError):
        return param_spec(cls)


def public(mod: ModuleType) -> dict[str, object]:
    names = getattr(mod, "__all__", None)
    assert names is not None, f"{mod.__name__} defines no __all__"
    return {n: getattr(mod, n) for n in names}


@pytest.mark.parametrize("name", KERNELS)
def test_same_public_names(both, name):
    c, py = both(name)
    assert sorted(c.__all__) == sorted(py.__all__)
    for attr in c.__all__:
        assert hasattr(c, attr) and hasattr(py, attr), attr
    # Nothing public beyond __all__ on either side (modules and __future__ features aside).
    for mod in (c, py):
        extra = {
            n
            for n, v in vars(mod).items()
            if not n.startswith("_")
            and not isinstance(v, ModuleType)
            and type(v).__name__ != "_Feature"
            and n not in mod.__all__
            and n not in TYPING_NAMES
        }
        assert not extra, f"{mod.__name__} exposes {extra} outside __all__"


@pytest.mark.parametrize("name", KERNELS)
def test_same_signatures(both, name):
    c, py = both(name)
    for attr, pv in public(py).items():
        cv = getattr(c, attr)
        if isinstance(pv, type):
            assert isinstance(cv, type), attr
            assert class_spec(cv) == class_spec(pv), attr
            _same_members(cv, pv)
        elif callable(pv):
            assert callable(cv), attr
            assert param_spec(cv) == param_spec(pv), attr
        else:
            assert type(cv) is type(pv) and cv == pv, attr


def _same_members(c_cls: type, py_cls: type) -> None:
    def members(cls: type) -> dict[str, object]:
        return {n: v for n, v in vars(cls).items() if not n.startswith("_")}

    cm, pm = members(c_cls), members(py_cls)
    assert sorted(cm) == sorted(pm), py_cls.__name__
    for n, pv in pm.items():
        cv = cm[n]
        if inspect.isdatadescriptor(pv):
            assert inspect.isdatadescriptor(cv), n
            for cls in (c_cls, py_cls):  # read-only on both sides
                with pytest.raises(AttributeError):
                    setattr(SAMPLES[py_cls.__name__](cls), n, 0)
        else:
            assert callable(cv) and callable(pv), n
            assert param_spec(cv) == param_spec(pv), n


def test_parser_reads_c_signatures():
    assert _from_text("f(digest, int width=2, Py_ssize_t depth=2) -> str") == [
        ("digest", "POSITIONAL_OR_KEYWORD", None),
        ("width", "POSITIONAL_OR_KEYWORD", "2"),
        ("depth", "POSITIONAL_OR_KEYWORD", "2"),
    ]
    assert _from_text("Pump(self, chunk_size, transforms=(), sinks=(), *, x: int = -1)") == [
        ("chunk_size", "POSITIONAL_OR_KEYWORD", None),
        ("transforms", "POSITIONAL_OR_KEYWORD", "()"),
        ("sinks", "POSITIONAL_OR_KEYWORD", "()"),
        ("x", "KEYWORD_ONLY", "-1"),
    ]
