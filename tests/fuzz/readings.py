"""Hypothesis strategies of reading messages, valid and hostile, each with its verdict.

A :class:`Case` is one message and what any correct decoder must make of it:
the reading it holds, or the start of its dead letter's reason (the part at
fault: ``payload``, ``key`` or ``field '<name>'``). Every hostile case is a
valid message with exactly one thing broken, so its verdict is known without
asking the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import strategies as st

from dataflows.flow_sites import FORMAT as FLOW_SITES
from operators.serde import BEARS, METRICS, SENSORS, WireFormat
from operators.sitereading import CHANNELS

MAX_SERIES = 256
EPOCH = datetime(1970, 1, 1)
FIRST = datetime(2000, 1, 1)
END = datetime(2100, 1, 1)
MS = timedelta(milliseconds=1)

Reading = tuple[str, int, tuple[float, ...], str | None]
Pairs = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Spec:
    """A wire format as the fuzzer sees it.

    Attributes:
        name: For test ids.
        fmt: The format under test.
        values: Its value fields, in channel order.
        multi: Multi-channel rules (site id a string, a key must match it, every
            channel present); else single-value rules (the key stands in for a
            missing series id, an integer id is taken as text).

    """

    name: str
    fmt: WireFormat
    values: tuple[str, ...]
    multi: bool = False

    @property
    def reserved(self) -> frozenset[str]:
        return frozenset((self.fmt.series_field, "ts", "label", *self.values))


SPECS = (
    Spec("sensors", SENSORS, ("temp",)),
    Spec("metrics", METRICS, ("value",)),
    Spec("bears", BEARS, ("heart_rate",)),
    Spec("flow_sites", FLOW_SITES, CHANNELS, multi=True),
)
SENSORS_SPEC = SPECS[0]


@dataclass(frozen=True)
class Case:
    """One message and its verdict.

    Attributes:
        key: Message key.
        value: Message payload (``None``: a tombstone).
        reading: ``(series, ts_ms, values, label)`` when the message is valid.
        fault: Start of the dead letter's reason when it is not.
        kind: What was done to the message (for failure reports).

    """

    key: bytes | None
    value: bytes | None
    reading: Reading | None
    fault: str | None
    kind: str


def json_object(pairs: Pairs) -> bytes:
    """A JSON object from ``(name, JSON token)`` pairs, kept in order (duplicates too)."""
    return b"{" + b",".join(orjson.dumps(k) + b":" + v for k, v in pairs) + b"}"


def ms_of(naive_utc: datetime) -> int:
    return (naive_utc - EPOCH) // MS


# -- pieces ------------------------------------------------------------------------------------

TEXT = st.characters(exclude_categories=("Cs",))
SHORT_TEXT = st.text(TEXT, max_size=12)


@st.composite
def long_text(draw: st.DrawFn, lo: int, hi: int) -> str:
    """A string of ``lo..hi`` characters, cheap to draw however long."""
    n = draw(st.integers(lo, hi))
    unit = draw(st.text(TEXT, min_size=1, max_size=3))
    return (unit * (n // len(unit) + 1))[:n]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**63), 2**64 - 1)
    | SHORT_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SHORT_TEXT, inner, max_size=3),
    max_leaves=8,
)
JSON_TOKENS = JSON_VALUES.map(orjson.dumps)


@st.composite
def series_ids(draw: st.DrawFn, multi: bool) -> tuple[bytes, str]:
    """``(JSON token, series id it stands for)``; an integer id is valid only single-value."""
    if not multi and draw(st.integers(0, 5)) == 0:
        n = draw(st.integers(-(2**63), 2**64 - 1))
        return orjson.dumps(n), str(n)
    name = draw(
        st.text(TEXT, min_size=1, max_size=12)
        | long_text(MAX_SERIES - 2, MAX_SERIES)
        | st.sampled_from(["1", "0", "sensor 7", "é🙂", "\x00", "a\nb", '"', "\\"])
    )
    return orjson.dumps(name), name


@st.composite
def stamps(draw: st.DrawFn, lo: datetime = FIRST, hi: datetime = END - MS) -> tuple[str, int]:
    """``(ts text, epoch ms)`` of an event time in ``lo..hi`` (UTC), in any accepted style."""
    when = draw(st.datetimes(min_value=lo, max_value=hi))
    when = when.replace(microsecond=when.microsecond // 1000 * 1000)
    style = draw(st.sampled_from(["plain", "iso", "z", "offset"]))
    if style == "plain":
        text = when.strftime("%Y-%m-%d %H:%M:%S")
        if when.microsecond:
            text += f".{when.microsecond:06d}"
    elif style == "iso":
        text = when.replace(tzinfo=UTC).isoformat()
    elif style == "z":
        text = when.isoformat() + "Z"
    else:
        minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
        text = when.replace(tzinfo=UTC).astimezone(timezone(timedelta(minutes=minutes))).isoformat()
    return text, ms_of(when)


#: Event times at the edges of the accepted window, and whether each is inside it.
EDGE_STAMPS = [
    ("2000-01-01 00:00:00", True),
    ("1999-12-31 23:59:59.999", False),
    ("2099-12-31 23:59:59.999", True),
    ("2100-01-01 00:00:00", False),
    ("2100-01-01T00:59:59+01:00", True),
    ("1999-12-31T23:00:00-02:00", True),
    ("2000-01-01T00:30:00+01:00", False),
    ("1970-01-01 00:00:00", False),
    ("0001-01-01T00:00:00+14:00", False),
    ("0001-01-01T00:00:00-14:00", False),
    ("9999-12-31T23:59:59.999999-14:00", False),
    ("9999-12-31 23:59:59.999999", False),
]


def edge_ms(text: str) -> int:
    aware = datetime.fromisoformat(text.replace(" ", "T"))
    if aware.tzinfo is None:
        aware = aware.replace(tzinfo=UTC)
    return (aware - datetime(1970, 1, 1, tzinfo=UTC)) // MS


@st.composite
def numbers(draw: st.DrawFn) -> tuple[bytes, float]:
    """``(JSON token, value)`` of a finite number JSON can carry, tiny to huge."""
    which = draw(st.integers(0, 3))
    if which == 0:
        x = draw(st.floats(allow_nan=False, allow_infinity=False))
        return orjson.dumps(x), x
    if which == 1:
        n = draw(st.integers(-(2**63), 2**64 - 1))
        return orjson.dumps(n), float(n)
    if which == 2:
        digits = draw(st.integers(20, 308))
        text = draw(st.sampled_from(["", "-"])) + "9" * (digits - 1) + "1"
        return text.encode(), float(int(text))
    text = draw(
        st.sampled_from(["1e308", "-1.5E+307", "5e-324", "1e-400", "-0", "-0.0", "0.1e1", "1E+2"])
    )
    return text.encode(), float(text)


#: Number-like tokens JSON has no room for: invalid JSON, so the whole payload is at fault.
NOT_NUMBERS = [
    b"NaN", b"-NaN", b"nan", b"Infinity", b"-Infinity", b"inf", b"1e309", b"-1e400",
    b"9" * 400, b"0x10", b"01", b"+1", b".5", b"1.", b"1e", b"--1", b"1_000",
]  # fmt: skip
#: Bytes that are not UTF-8 (or not allowed raw) inside a JSON string.
NOT_UTF8 = [
    b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80",
    b"\xc3", b"\x00", b"\n", b"\x1f",
]  # fmt: skip


def wrong_types(*, null: bool) -> st.SearchStrategy[bytes]:
    """JSON tokens of anything but a string (and a number)."""
    base = (
        st.booleans()
        | st.lists(JSON_VALUES, max_size=2)
        | st.dictionaries(SHORT_TEXT, JSON_VALUES, max_size=2)
    )
    return (base | st.none() if null else base).map(orjson.dumps)


# -- valid messages ------------------------------------------------------------------------------


@dataclass
class Parts:
    """A valid message in pieces, for a hostile strategy to break one of them."""

    pairs: Pairs
    key: bytes | None
    reading: Reading

    def set(self, name: str, token: bytes) -> None:
        """Give the field ``name`` (its last occurrence, which is what counts) another token."""
        idx = max(i for i, (k, _) in enumerate(self.pairs) if k == name)
        self.pairs[idx] = (name, token)

    def drop(self, name: str) -> None:
        """Remove every occurrence of the field ``name``."""
        self.pairs = [(k, v) for k, v in self.pairs if k != name]

    def case(self, kind: str, fault: str | None = None) -> Case:
        reading = self.reading if fault is None else None
        return Case(self.key, json_object(self.pairs), reading, fault, kind)


@st.composite
def valid_parts(
    draw: st.DrawFn,
    spec: Spec,
    series: st.SearchStrategy[tuple[bytes, str]] | None = None,
    times: st.SearchStrategy[tuple[str, int]] | None = None,
) -> Parts:
    """A valid message: fields in any order, unknown fields, earlier duplicates of known ones."""
    token, name = draw(series_ids(spec.multi) if series is None else series)
    text, ts_ms = draw(stamps() if times is None else times)
    nums = [draw(numbers()) for _ in spec.values]
    label = draw(st.none() | SHORT_TEXT | long_text(1_000, 50_000))
    pairs: Pairs = [(spec.fmt.series_field, token), ("ts", orjson.dumps(text))]
    pairs += [(f, tok) for f, (tok, _) in zip(spec.values, nums, strict=True)]
    if label is not None or draw(st.booleans()):
        pairs.append(("label", orjson.dumps(label)))
    extra_names = st.text(TEXT, max_size=10).filter(lambda k: k not in spec.reserved)
    pairs += draw(st.lists(st.tuples(extra_names, JSON_TOKENS), max_size=3))
    if draw(st.booleans()):
        depth = draw(st.integers(1, 200))
        pairs.append(("nested", b"[" * depth + b"]" * depth))
    if draw(st.integers(0, 9)) == 0:
        pairs.append(("blob", orjson.dumps(draw(long_text(10_000, 200_000)))))
    pairs = draw(st.permutations(pairs))
    # An earlier duplicate of a known field: JSON objects keep the last one.
    for name_ in draw(st.lists(st.sampled_from(sorted(spec.reserved)), max_size=2)):
        if any(k == name_ for k, _ in pairs):
            first = min(i for i, (k, _) in enumerate(pairs) if k == name_)
            at = draw(st.integers(0, first))
            pairs.insert(at, (name_, draw(JSON_TOKENS)))
    if spec.multi:
        key = draw(st.sampled_from([None, name.encode()]))
    else:
        key = draw(st.none() | st.just(name.encode()) | st.binary(max_size=8))
    values = tuple(v for _, v in nums)
    return Parts(pairs, key, (name, ts_ms, values, label))


@st.composite
def valid(draw: st.DrawFn, spec: Spec, **kwargs: object) -> Case:
    parts = draw(valid_parts(spec, **kwargs))  # type: ignore[arg-type]
    if not spec.multi and draw(st.integers(0, 7)) == 0:
        # A single-value message may leave its series id to the key.
        name = parts.reading[0]
        if name and len(name) <= MAX_SERIES:
            parts.drop(spec.fmt.series_field)
            if draw(st.booleans()):
                parts.pairs.append((spec.fmt.series_field, b"null"))
            parts.key = name.encode()
            return parts.case("series from the key")
    return parts.case("valid")


# -- hostile messages ----------------------------------------------------------------------------

PAYLOAD_KINDS = [
    "tombstone", "empty", "truncated", "not utf-8", "deep", "not a number", "not an object",
    "garbage",
]  # fmt: skip
FIELD_KINDS = [
    "series type", "series missing", "ts missing", "ts type", "ts text", "ts range",
    "value missing", "value type", "label type",
]  # fmt: skip
MULTI_KINDS = ["key mismatch"]


def kinds(spec: Spec) -> list[str]:
    return PAYLOAD_KINDS + FIELD_KINDS + (MULTI_KINDS if spec.multi else [])


def _unparseable(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return True
    return False


@st.composite
def hostile(draw: st.DrawFn, spec: Spec, **kwargs: object) -> Case:
    """A valid message with one thing broken, and the part of the reason that must say so."""
    parts = draw(valid_parts(spec, **kwargs))  # type: ignore[arg-type]
    kind = draw(st.sampled_from(kinds(spec)))
    series_f = f"field '{spec.fmt.series_field}'"
    if kind == "tombstone":
        return Case(parts.key, None, None, "payload", kind)
    if kind == "empty":
        value = draw(st.sampled_from([b"", b" ", b"\n", b"\xef\xbb\xbf"]))
        return Case(parts.key, value, None, "payload", kind)
    if kind == "truncated":
        whole = json_object(parts.pairs)
        cut = draw(st.integers(0, len(whole) - 1))
        return Case(parts.key, whole[:cut], None, "payload", kind)
    if kind == "not utf-8":
        junk = draw(st.sampled_from(NOT_UTF8))
        at = draw(st.sampled_from([spec.fmt.series_field, "ts", "label", "extra"]))
        token = b'"x' + junk + b'y"'
        if at in dict(parts.pairs):
            parts.set(at, token)
        else:
            parts.pairs.append((at, token))
        return parts.case(kind, "payload")
    if kind == "deep":
        depth = draw(st.integers(1_100, 20_000))
        opener = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        parts.pairs.append(("nested", opener[0] * depth + b"0" + opener[1] * depth))
        return parts.case(kind, "payload")
    if kind == "not a number":
        parts.set(draw(st.sampled_from(spec.values)), draw(st.sampled_from(NOT_NUMBERS)))
        return parts.case(kind, "payload")
    if kind == "not an object":
        value = orjson.dumps(draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict))))
        return Case(parts.key, value, None, "payload", kind)
    if kind == "garbage":
        # Not JSON from its first byte: a stray byte no JSON text can start with.
        start = draw(st.sampled_from([b"\xff", b"}", b"]", b",", b":", b"'", b"x", b"\x00"]))
        return Case(parts.key, start + draw(st.binary(max_size=64)), None, "payload", kind)
    if kind == "series type":
        wrong = wrong_types(null=False) | st.floats(allow_nan=False, allow_infinity=False).map(
            orjson.dumps
        )
        if spec.multi:
            wrong = wrong | st.integers(-(2**63), 2**64 - 1).map(orjson.dumps)
        token = draw(wrong | st.just(b'""') | long_text(MAX_SERIES + 1, 100_000).map(orjson.dumps))
        parts.set(spec.fmt.series_field, token)
        return parts.case(kind, series_f)
    if kind == "series missing":
        parts.drop(spec.fmt.series_field)
        if spec.multi:
            return parts.case(kind, series_f)
        parts.key = draw(st.sampled_from([None, b"", b"\xff\xfe", b"ok\x80"]))
        return parts.case(kind, "key" if parts.key else series_f)
    if kind == "key mismatch":
        name = parts.reading[0].encode()
        parts.key = draw(st.binary(max_size=10).filter(lambda k: k != name))
        return parts.case(kind, "key")
    if kind == "ts missing":
        parts.drop("ts")
        return parts.case(kind, "field 'ts'")
    if kind == "ts type":
        numbers_ = st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2**63)
        parts.set("ts", draw(wrong_types(null=True) | numbers_.map(orjson.dumps)))
        return parts.case(kind, "field 'ts'")
    if kind == "ts text":
        text = draw(
            st.text(TEXT, max_size=40).filter(_unparseable)
            | st.sampled_from(
                ["soon", "2024-13-01 00:00:00", "2024-02-30", "24:00", "2024-01-01 25:00"]
            )
        )
        parts.set("ts", orjson.dumps(text))
        return parts.case(kind, "field 'ts'")
    if kind == "ts range":
        text, inside = draw(st.sampled_from(EDGE_STAMPS))
        parts.set("ts", orjson.dumps(text))
        if not inside:
            return parts.case(kind, "field 'ts'")
        name, _, values, label = parts.reading
        parts.reading = (name, edge_ms(text), values, label)
        return parts.case("ts at the edge")
    if kind == "value missing":
        name = draw(st.sampled_from(spec.values))
        parts.drop(name)
        return parts.case(kind, f"field '{name}'")
    if kind == "value type":
        name = draw(st.sampled_from(spec.values))
        numeric_text = numbers().map(lambda t: orjson.dumps(t[0].decode()))
        parts.set(name, draw(wrong_types(null=True) | numeric_text | SHORT_TEXT.map(orjson.dumps)))
        return parts.case(kind, f"field '{name}'")
    assert kind == "label type"
    numbers_ = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10, 10)
    token = draw(wrong_types(null=False) | numbers_.map(orjson.dumps))
    if "label" in dict(parts.pairs):
        parts.set("label", token)
    else:
        parts.pairs.append(("label", token))
    return parts.case(kind, "field 'label'")


def cases(spec: Spec, **kwargs: object) -> st.SearchStrategy[Case]:
    """Valid and hostile messages, about half each."""
    return valid(spec, **kwargs) | hostile(spec, **kwargs)
