"""The PV table of a caproto PVGroup, read from the PVs themselves.

``spm-ioc --list-pvs`` prints it and docs/reference/pv-table.md holds the same text, so the
documentation cannot drift from what the IOC serves (a test compares them).
"""

from __future__ import annotations

from dataclasses import dataclass

from caproto import ChannelType
from caproto.server import PVGroup

#: How each CA data type is named in the table.
_TYPE_NAMES = {
    ChannelType.DOUBLE: "float",
    ChannelType.FLOAT: "float32",
    ChannelType.LONG: "int",
    ChannelType.ENUM: "enum",
    ChannelType.STRING: "string",
}


@dataclass(frozen=True)
class PVRow:
    """One PV as documented: full name, type, access, units, limits and meaning."""

    name: str
    type: str
    access: str
    units: str
    limits: str
    meaning: str


def pv_rows(group: PVGroup) -> list[PVRow]:
    """Describe every PV of ``group``, in declaration order."""
    rows = []
    for name, pv in group.pvdb.items():
        type_name = _TYPE_NAMES.get(pv.data_type, pv.data_type.name.lower())
        if pv.max_length > 1:
            type_name += f"[<={pv.max_length}]"
        if pv.data_type is ChannelType.ENUM:
            limits = ", ".join(pv.enum_strings)
        elif getattr(pv, "lower_ctrl_limit", 0) != getattr(pv, "upper_ctrl_limit", 0):
            limits = f"{pv.lower_ctrl_limit:g} to {pv.upper_ctrl_limit:g}"
        else:
            limits = ""
        rows.append(PVRow(
            name=name,
            type=type_name,
            access="ro" if pv.pvspec.read_only else "rw",
            units=getattr(pv, "units", "") or "",
            limits=limits,
            meaning=" ".join((pv.pvspec.doc or "").split()),
        ))
    return rows


def markdown_table(rows: list[PVRow]) -> str:
    """The rows as a Markdown table (no trailing newline)."""
    lines = ["| PV | type | access | units | limits | meaning |", "|---|---|---|---|---|---|"]
    lines += [f"| `{r.name}` | {r.type} | {r.access} | {r.units} | {r.limits} | {r.meaning} |"
              for r in rows]
    return "\n".join(lines)
