"""Template records of NetFlow v9 (RFC 3954) and IPFIX (RFC 7011): parsing and compiling to a record layout.

A compiled template knows, for the elements the decoder reads, a numpy structured dtype. For a template without
variable-length fields the dtype describes the record as it lies on the wire (offsets into the record, itemsize
= record length), so a whole flowset, or many flowsets concatenated, decodes with one ``np.frombuffer``. A
template with variable-length fields gets a packed dtype instead; its records are walked one by one and the
wanted bytes copied into that packed layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from taishi.collectors.netflow_fields import FIXED_LENGTHS, VARIABLE_LENGTH, WANTED, Kind, element_name

_U16 = struct.Struct(">H")
_U16x2 = struct.Struct(">HH")
_U16x3 = struct.Struct(">HHH")
_U32 = struct.Struct(">I")


class FieldSpec(NamedTuple):
    """One field specifier of a template: element id, length on the wire, enterprise number (0 = IANA)."""

    element: int
    length: int
    enterprise: int = 0


class TemplateSpec(NamedTuple):
    """A template record as sent. Cheap to build and compare, so a refresh is recognised without compiling."""

    template_id: int
    fields: tuple[FieldSpec, ...]
    options: bool = False
    scope_count: int = 0  # options templates: the first scope_count fields are scope fields
    v9_scope: bool = False  # v9 options: scope fields are v9 scope types (1 = system ...), not elements


class Wanted(NamedTuple):
    """An element the decoder reads: its column name, kind, length and where it sits in the template."""

    name: str
    kind: Kind
    length: int
    position: int  # index of the field in the template


def _numpy_format(kind: Kind, length: int) -> np.dtype:
    if kind == "ipv6":
        return np.dtype("V16")
    if kind == "float":
        return np.dtype(f">f{length}")
    if length in (1, 2, 4, 8):
        return np.dtype(f">u{length}")
    return np.dtype((np.uint8, (length,)))  # odd reduced-size integer: combined byte by byte later


@dataclass(slots=True)
class Template:
    """A data or options template of one exporter key, compiled for decoding (see ``build``)."""

    spec: TemplateSpec
    learned_at: float
    record_length: int | None  # None when a field is variable-length
    min_length: int  # fewest bytes one record can take
    wanted: tuple[Wanted, ...]
    dtype: np.dtype
    notes: tuple[str, ...]  # fields that could not be read, for the error list

    @property
    def template_id(self) -> int:
        """The template id (>= 256)."""
        return self.spec.template_id

    @property
    def options(self) -> bool:
        """True for an options template, whose records describe the exporter rather than flows."""
        return self.spec.options

    @classmethod
    def build(cls, spec: TemplateSpec, learned_at: float = 0.0) -> Template:
        """Compile a template: which fields to read, and the numpy dtype that reads them."""
        fields = spec.fields
        variable = any(f.length == VARIABLE_LENGTH for f in fields)
        min_length = sum(1 if f.length == VARIABLE_LENGTH else f.length for f in fields)
        wanted: list[Wanted] = []
        notes: list[str] = []
        taken: set[str] = set()
        offsets: list[int] = []
        offset = 0
        for index, f in enumerate(fields):
            offsets.append(offset)
            offset += 0 if f.length == VARIABLE_LENGTH else f.length
            if spec.v9_scope and index < spec.scope_count:
                continue
            known = WANTED.get((f.enterprise, f.element))
            if known is None or known[0] in taken:
                continue
            name, kind, _ = known
            if f.length not in FIXED_LENGTHS[kind]:
                notes.append(
                    f"template {spec.template_id}: {element_name(f.enterprise, f.element)} has length "
                    f"{f.length}, expected one of {FIXED_LENGTHS[kind]}; field ignored"
                )
                continue
            taken.add(name)
            wanted.append(Wanted(name, kind, f.length, index))
        if variable:  # records are walked and the wanted bytes packed one after another
            packed = np.cumsum([0] + [w.length for w in wanted]).tolist()
            at, itemsize = packed[:-1], packed[-1]
        else:  # records are read where they lie
            at, itemsize = [offsets[w.position] for w in wanted], min_length
        dtype = np.dtype(
            {
                "names": [w.name for w in wanted],
                "formats": [_numpy_format(w.kind, w.length) for w in wanted],
                "offsets": at,
                "itemsize": itemsize,
            }
        )
        return cls(
            spec, learned_at, None if variable else min_length, min_length, tuple(wanted), dtype, tuple(notes)
        )


@dataclass(slots=True)
class ParsedTemplates:
    """Templates found in one template flowset/set, withdrawn ids, and what was wrong."""

    templates: list[TemplateSpec] = field(default_factory=list)
    withdrawn: list[int] = field(default_factory=list)  # IPFIX withdrawals; 2 or 3 = all templates of a kind
    errors: list[str] = field(default_factory=list)


def _padding(buf: bytes | memoryview, start: int, end: int) -> bool:
    return not any(buf[start:end])


def parse_v9_templates(buf: bytes | memoryview, start: int, end: int) -> ParsedTemplates:
    """Template records of a NetFlow v9 template flowset (id 0); ``start``/``end`` bound its body."""
    out = ParsedTemplates()
    pos = start
    while end - pos >= 4:
        template_id, count = _U16x2.unpack_from(buf, pos)
        if template_id == 0 and count == 0 and _padding(buf, pos, end):
            break
        need = 4 + 4 * count
        if pos + need > end:
            out.errors.append(
                f"template {template_id} at offset {pos} declares {count} fields ({need} bytes) but only "
                f"{end - pos} bytes remain in its flowset"
            )
            break
        fields = tuple(FieldSpec(*_U16x2.unpack_from(buf, pos + 4 + 4 * i)) for i in range(count))
        if template_id < 256:
            out.errors.append(f"template id {template_id} at offset {pos} is reserved (expected >= 256)")
        else:
            out.templates.append(TemplateSpec(template_id, fields))
        pos += need
    return out


def parse_v9_options_templates(buf: bytes | memoryview, start: int, end: int) -> ParsedTemplates:
    """Options template records of a NetFlow v9 options template flowset (id 1)."""
    out = ParsedTemplates()
    pos = start
    while end - pos >= 6 and not _padding(buf, pos, end):
        template_id, scope_len, option_len = _U16x3.unpack_from(buf, pos)
        if scope_len % 4 or option_len % 4:
            out.errors.append(
                f"options template {template_id} at offset {pos}: scope length {scope_len} and option length "
                f"{option_len} must be multiples of 4 (4 bytes per field)"
            )
            break
        need = 6 + scope_len + option_len
        if pos + need > end:
            out.errors.append(
                f"options template {template_id} at offset {pos} needs {need} bytes but only {end - pos} "
                "remain in its flowset"
            )
            break
        fields = tuple(
            FieldSpec(*_U16x2.unpack_from(buf, pos + 6 + 4 * i)) for i in range((scope_len + option_len) // 4)
        )
        if template_id < 256:
            out.errors.append(
                f"options template id {template_id} at offset {pos} is reserved (expected >= 256)"
            )
        else:
            out.templates.append(TemplateSpec(template_id, fields, True, scope_len // 4, True))
        pos += need
    return out


def _ipfix_fields(
    buf: bytes | memoryview, pos: int, end: int, count: int
) -> tuple[tuple[FieldSpec, ...], int] | None:
    fields = []
    for _ in range(count):
        if pos + 4 > end:
            return None
        element, length = _U16x2.unpack_from(buf, pos)
        pos += 4
        enterprise = 0
        if element & 0x8000:
            if pos + 4 > end:
                return None
            (enterprise,) = _U32.unpack_from(buf, pos)
            element &= 0x7FFF
            pos += 4
        fields.append(FieldSpec(element, length, enterprise))
    return tuple(fields), pos


def parse_ipfix_templates(buf: bytes | memoryview, start: int, end: int, *, options: bool) -> ParsedTemplates:
    """Template (set id 2) or options template (set id 3) records of an IPFIX set."""
    out = ParsedTemplates()
    kind = "options template" if options else "template"
    pos = start
    while end - pos >= 4:
        template_id, count = _U16x2.unpack_from(buf, pos)
        if count == 0:
            if template_id == 0 and _padding(buf, pos, end):
                break
            out.withdrawn.append(template_id)  # RFC 7011 section 8.1 withdrawal
            pos += 4
            continue
        scope_count = 0
        header = 4
        if options:
            if end - pos < 6:
                out.errors.append(f"{kind} {template_id} at offset {pos} is cut short (no scope field count)")
                break
            (scope_count,) = _U16.unpack_from(buf, pos + 4)
            header = 6
            if scope_count == 0 or scope_count > count:
                out.errors.append(
                    f"{kind} {template_id} at offset {pos}: scope field count {scope_count} must be between 1 "
                    f"and the field count {count}"
                )
                break
        parsed = _ipfix_fields(buf, pos + header, end, count)
        if parsed is None:
            out.errors.append(
                f"{kind} {template_id} at offset {pos} declares {count} fields but its set ends at offset {end}"
            )
            break
        fields, next_pos = parsed
        if template_id < 256:
            out.errors.append(f"{kind} id {template_id} at offset {pos} is reserved (expected >= 256)")
        else:
            out.templates.append(TemplateSpec(template_id, fields, options, scope_count))
        pos = next_pos
    return out


def walk_variable_records(
    tpl: Template, buf: bytes | memoryview, start: int, end: int
) -> tuple[bytes, int, str | None]:
    """Records of a variable-length template: the wanted bytes packed per ``tpl.dtype``, the record count and,
    when a record overruns its set, what went wrong (the records before it are kept)."""
    lengths = [f.length for f in tpl.spec.fields]
    wanted_at = {w.position for w in tpl.wanted}
    packed = bytearray()
    count = 0
    pos = start
    while end - pos >= max(tpl.min_length, 1):
        record_start = pos
        chunk = bytearray()
        complete = True
        for index, declared in enumerate(lengths):
            length = declared
            if declared == VARIABLE_LENGTH:  # RFC 7011 section 7: 1-byte length, or 255 then a 2-byte length
                if pos >= end:
                    complete = False
                    break
                length = buf[pos]
                pos += 1
                if length == 255:
                    if pos + 2 > end:
                        complete = False
                        break
                    (length,) = _U16.unpack_from(buf, pos)
                    pos += 2
            if pos + length > end:
                complete = False
                break
            if index in wanted_at:
                chunk += buf[pos : pos + length]
            pos += length
        if not complete:
            if _padding(buf, record_start, end):
                break
            return (
                bytes(packed),
                count,
                f"record {count + 1} at offset {record_start} of template {tpl.template_id} runs past the end "
                f"of its set at offset {end}",
            )
        packed += chunk
        count += 1
    return bytes(packed), count, None
