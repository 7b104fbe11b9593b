"""What every typed message shares: reading a decoded JSON object field by field with
one kind of error, the base class of messages, and the dispatch of a frame by its type.

A message's ``from_dict`` accepts what JSON decoding produces and rejects anything else
with a :class:`~agent.protocol.ProtocolError` naming the message and the field; keys it
does not know are ignored, so a newer peer may add optional fields without breaking an
older one. ``to_dict`` returns exactly the JSON object the message is on the wire.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, ClassVar, TypeVar

from agent.protocol import ProtocolError

M = TypeVar("M", bound="Message")
F = TypeVar("F", bound="Frame")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Fields:
    """The fields of one decoded JSON object; ``what`` names it in errors (``'applied' line``)."""

    def __init__(self, data: object, what: str) -> None:
        if not isinstance(data, Mapping):
            raise ProtocolError(f"{what} must be a JSON object, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.what = what

    def _wrong(self, key: str, expected: str, value: object) -> ProtocolError:
        return ProtocolError(f"{self.what}: field {key!r} must be {expected}, got {_show(value)}")

    def _get(self, key: str) -> object:
        try:
            return self.data[key]
        except KeyError:
            raise ProtocolError(f"{self.what}: missing field {key!r}") from None

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        return value

    def integer_or_none(self, key: str) -> int | None:
        """An integer, or None when the field is absent or null."""
        return None if self.data.get(key) is None else self.integer(key)

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._wrong(key, "a number", value)
        return value

    def number_or_none(self, key: str) -> float | None:
        return None if self.data.get(key) is None else self.number(key)

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        return value

    def text_or_none(self, key: str) -> str | None:
        return None if self.data.get(key) is None else self.text(key)

    def one_of(self, key: str, names: Collection[str]) -> str:
        value = self.text(key)
        if value not in names:
            raise self._wrong(key, f"one of {', '.join(names)}", value)
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        """A boolean; ``default`` when the field is absent or null."""
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false", value)
        return value

    def obj(self, key: str) -> dict[str, Any]:
        """A JSON object (its content is the caller's to read)."""
        value = self._get(key)
        if not isinstance(value, Mapping):
            raise self._wrong(key, "an object", value)
        return dict(value)

    def _array(self, key: str) -> list[object]:
        value = self._get(key)
        if not isinstance(value, (list, tuple)):
            raise self._wrong(key, "an array", value)
        return list(value)

    def texts(self, key: str) -> tuple[str, ...]:
        items = self._array(key)
        texts = tuple(item for item in items if isinstance(item, str))
        if len(texts) != len(items):
            raise self._wrong(key, "an array of strings", items)
        return texts

    def texts_or_nulls(self, key: str) -> tuple[str | None, ...]:
        items = self._array(key)
        texts = tuple(item for item in items if item is None or isinstance(item, str))
        if len(texts) != len(items):
            raise self._wrong(key, "an array of strings or nulls", items)
        return texts

    def integers(self, key: str) -> tuple[int, ...]:
        items = self._array(key)
        numbers = tuple(
            item for item in items if isinstance(item, int) and not isinstance(item, bool)
        )
        if len(numbers) != len(items):
            raise self._wrong(key, "an array of integers", items)
        return numbers

    def records(self, key: str, kind: type[M]) -> tuple[M, ...]:
        """An array of objects, each read as ``kind``."""
        return tuple(
            kind.read(Fields(item, f"{self.what}, {key}[{i}]"))
            for i, item in enumerate(self._array(key))
        )

    def record(self, key: str, kind: type[M]) -> M:
        return kind.read(Fields(self._get(key), f"{self.what}, {key}"))

    def record_or_none(self, key: str, kind: type[M]) -> M | None:
        return None if self.data.get(key) is None else self.record(key, kind)


class Message:
    """A JSON object with a fixed shape: ``to_dict`` is its wire form, ``from_dict`` reads
    it back (``from_dict(m.to_dict()) == m``)."""

    WHAT: ClassVar[str]  # how errors name it

    @classmethod
    def describe(cls) -> str:
        return cls.WHAT

    @classmethod
    def from_dict(cls: type[M], data: object) -> M:
        return cls.read(Fields(data, cls.describe()))

    @classmethod
    def read(cls: type[M], fields: Fields) -> M:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


class Frame(Message):
    """A message with a ``type`` field: one of a link's frames (or lines)."""

    TYPE: ClassVar[str]
    KIND: ClassVar[str] = "frame"  # "line" on the worker link

    @classmethod
    def describe(cls) -> str:
        return f"{cls.TYPE!r} {cls.KIND}"

    @classmethod
    def from_dict(cls: type[F], data: object) -> F:
        fields = Fields(data, cls.describe())
        if fields.data.get("type") != cls.TYPE:
            raise fields._wrong("type", repr(cls.TYPE), fields.data.get("type"))
        return cls.read(fields)


def frame_types(*kinds: type[F]) -> dict[str, type[F]]:
    """The frames of one direction of a link by type (each type once)."""
    by_type = {kind.TYPE: kind for kind in kinds}
    assert len(by_type) == len(kinds), "two frames of one direction share a type"
    return by_type


def parse_frame(data: object, kinds: Mapping[str, type[F]], what: str) -> F:
    """Read ``data`` as the frame its ``type`` names among ``kinds`` (``what`` names the
    link's messages in errors: "a line from a worker")."""
    fields = Fields(data, what)
    kind = fields.data.get("type")
    frame = kinds.get(kind) if isinstance(kind, str) else None
    if frame is None:
        raise ProtocolError(
            f"{what}: unknown type {_show(kind)}; expected one of {', '.join(kinds)}"
        )
    return frame.read(Fields(data, frame.describe()))


def drop_none(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``data`` without those of ``keys`` whose value is None (optional fields are absent
    from the wire when unset, rather than null)."""
    for key in keys:
        if data.get(key) is None:
            data.pop(key, None)
    return data
