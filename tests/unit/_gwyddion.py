"""Gwyddion itself as an independent reader: its C file modules, called through ctypes.

``gwy_file_load`` runs the same import code as the Gwyddion program (``nanonis.c``,
``createc.c``, ``gwyfile.c``), so what it returns is what a Gwyddion user sees. Needs the
Debian package ``gwyddion`` (``.ci/run`` installs it); :data:`MISSING` says why not, if not.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_GLOBAL = ctypes.RTLD_GLOBAL
_LIBRARIES = ("gwyddion2", "gwyprocess2", "gwydraw2", "gwydgets2", "gwymodule2", "gwyapp2")
GWY_RUN_NONINTERACTIVE = 1


@dataclass(frozen=True)
class GwyField:
    """One data field as Gwyddion loaded it: top line first, values in float64."""

    title: str
    data: np.ndarray
    xreal: float
    yreal: float
    unit_xy: str
    unit_z: str
    meta: dict[str, str]


def _load_libraries() -> tuple[dict[str, ctypes.CDLL], str | None]:
    libs: dict[str, ctypes.CDLL] = {}
    try:
        libs["glib"] = ctypes.CDLL("libglib-2.0.so.0", mode=_GLOBAL)
        libs["gobject"] = ctypes.CDLL("libgobject-2.0.so.0", mode=_GLOBAL)
        for name in _LIBRARIES:
            libs[name] = ctypes.CDLL(f"lib{name}.so.0", mode=_GLOBAL)
    except OSError as exc:
        return {}, f"Gwyddion's libraries are not installed (apt-get install gwyddion): {exc}"
    return libs, None


_LIBS, MISSING = _load_libraries()
_ready = False


def _init() -> None:
    global _ready
    if _ready:
        return
    glib, gwy, proc = _LIBS["glib"], _LIBS["gwyddion2"], _LIBS["gwyprocess2"]
    app, mod = _LIBS["gwyapp2"], _LIBS["gwymodule2"]
    app.gwy_app_init_nongui.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    app.gwy_app_init_nongui(None, None)
    mod.gwy_file_load.restype = ctypes.c_void_p
    mod.gwy_file_load.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
    glib.g_quark_from_string.restype = ctypes.c_uint32
    glib.g_quark_from_string.argtypes = [ctypes.c_char_p]
    glib.g_quark_to_string.restype = ctypes.c_char_p
    glib.g_quark_to_string.argtypes = [ctypes.c_uint32]
    gwy.gwy_container_gis_object.restype = ctypes.c_int
    gwy.gwy_container_gis_object.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_void_p)
    ]
    gwy.gwy_container_gis_string.restype = ctypes.c_int
    gwy.gwy_container_gis_string.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_char_p)
    ]
    gwy.gwy_si_unit_get_string.restype = ctypes.c_void_p
    gwy.gwy_si_unit_get_string.argtypes = [ctypes.c_void_p, ctypes.c_int]
    glib.g_free.argtypes = [ctypes.c_void_p]
    for name in ("xres", "yres"):
        getattr(proc, f"gwy_data_field_get_{name}").argtypes = [ctypes.c_void_p]
    for name in ("xreal", "yreal"):
        fn = getattr(proc, f"gwy_data_field_get_{name}")
        fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_double
    for name in ("si_unit_xy", "si_unit_z"):
        fn = getattr(proc, f"gwy_data_field_get_{name}")
        fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_void_p
    proc.gwy_data_field_get_data.restype = ctypes.POINTER(ctypes.c_double)
    proc.gwy_data_field_get_data.argtypes = [ctypes.c_void_p]
    # A GwyContainer's meta is walked with gwy_container_foreach.
    gwy.gwy_container_foreach.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, _FOREACH, ctypes.c_void_p
    ]
    _ready = True


_FOREACH = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)


def _unit(unit: int | None) -> str:
    if not unit:
        return ""
    text = _LIBS["gwyddion2"].gwy_si_unit_get_string(unit, 1)  # GWY_SI_UNIT_FORMAT_PLAIN
    value = ctypes.cast(text, ctypes.c_char_p).value or b""
    _LIBS["glib"].g_free(text)
    return value.decode()


def _meta(container: int, n: int) -> dict[str, str]:
    glib, gwy, gobject = _LIBS["glib"], _LIBS["gwyddion2"], _LIBS["gobject"]
    meta_obj = ctypes.c_void_p()
    if not gwy.gwy_container_gis_object(
        container, glib.g_quark_from_string(f"/{n}/meta".encode()), ctypes.byref(meta_obj)
    ):
        return {}
    out: dict[str, str] = {}
    gobject.g_value_get_string.restype = ctypes.c_char_p
    gobject.g_value_get_string.argtypes = [ctypes.c_void_p]
    gobject.g_type_check_value_holds.restype = ctypes.c_int
    gobject.g_type_check_value_holds.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    g_type_string = 16 << 2  # G_TYPE_STRING, a fundamental type

    def visit(quark: int, value: int, _data: int) -> None:
        if gobject.g_type_check_value_holds(value, g_type_string):
            key = glib.g_quark_to_string(quark).decode("utf-8", "replace")
            out[key] = (gobject.g_value_get_string(value) or b"").decode("utf-8", "replace")

    callback = _FOREACH(visit)
    gwy.gwy_container_foreach(meta_obj, None, callback, None)
    return out


def gwyddion_load(path: str | Path) -> list[GwyField]:
    """Every ``/N/data`` field that Gwyddion's file modules load from ``path``."""
    if MISSING:
        raise RuntimeError(MISSING)
    _init()
    glib, gwy = _LIBS["glib"], _LIBS["gwyddion2"]
    proc, mod = _LIBS["gwyprocess2"], _LIBS["gwymodule2"]
    error = ctypes.c_void_p()
    container = mod.gwy_file_load(str(path).encode(), GWY_RUN_NONINTERACTIVE, ctypes.byref(error))
    if not container:
        raise OSError(f"Gwyddion cannot load {path}")
    fields = []
    for n in range(64):
        field = ctypes.c_void_p()
        quark = glib.g_quark_from_string(f"/{n}/data".encode())
        if not gwy.gwy_container_gis_object(container, quark, ctypes.byref(field)):
            continue
        xres, yres = proc.gwy_data_field_get_xres(field), proc.gwy_data_field_get_yres(field)
        data = np.ctypeslib.as_array(proc.gwy_data_field_get_data(field), shape=(yres, xres))
        title = ctypes.c_char_p()
        gwy.gwy_container_gis_string(
            container, glib.g_quark_from_string(f"/{n}/data/title".encode()), ctypes.byref(title)
        )
        fields.append(
            GwyField(
                title=(title.value or b"").decode("utf-8", "replace"),
                data=data.copy(),
                xreal=proc.gwy_data_field_get_xreal(field),
                yreal=proc.gwy_data_field_get_yreal(field),
                unit_xy=_unit(proc.gwy_data_field_get_si_unit_xy(field)),
                unit_z=_unit(proc.gwy_data_field_get_si_unit_z(field)),
                meta=_meta(container, n),
            )
        )
    return fields
