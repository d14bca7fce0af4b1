"""Imaging plans: one frame at a given place, and a survey along DeepSPM's spiral.

A survey is one run with one event per image in the ``primary`` stream (image, frame
centre, size, pixels, area index, frame counter, clock); with the twin, each image also
gets a ``truth`` event with the true tip class. :func:`set_frame` is re-exported from
:mod:`~spm_bluesky.plans.stubs`.
"""

from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from spm_bluesky import schema
from spm_bluesky.devices.stm import STM
from spm_bluesky.domain import limits
from spm_bluesky.domain.area import MAX_DISTANCE, AreaMask
from spm_bluesky.plans._common import (
    check_count,
    check_mask_path,
    check_scan_settings,
    check_stm,
    read_truth,
    run_metadata,
)
from spm_bluesky.plans.stubs import FrameSettings, area_mask, set_frame, take_frame


def acquire_image(
    stm: STM,
    x: float,
    y: float,
    size: float = 10e-9,
    pixels: int = 64,
    bias: float | None = None,
    setpoint: float | None = None,
    speed: float | None = None,
    session_uid: str | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator[str]:
    """Scan one frame centred at (x, y) (m, inside the approach area) in a run of its own.

    ``bias`` (V), ``setpoint`` (A) and ``speed`` (m/s) are written only when given. Every
    parameter is checked against ``spm_bluesky.domain.limits`` before anything is written.
    Returns the run's uid.
    """
    check_stm(stm)
    limits.check_frame(x, y, size, pixels)
    check_scan_settings(bias, setpoint, speed)
    plan_args = {"x": x, "y": y, "size": size, "pixels": pixels, "bias": bias,
                 "setpoint": setpoint, "speed": speed}
    run_md = yield from run_metadata(stm, schema.ACQUIRE_IMAGE, plan_args, session_uid, md)

    @bpp.run_decorator(md=run_md)
    def inner() -> MsgGenerator[None]:
        yield from set_frame(stm, x, y, size, pixels, bias, setpoint, speed)
        yield from bps.trigger_and_read([stm.scan])
        yield from read_truth(stm)

    return (yield from inner())


def survey(
    stm: STM,
    n_images: int,
    size: float = 10e-9,
    pixels: int = 64,
    mask_path: str | None = None,
    block_radius: float | None = None,
    max_distance: float = MAX_DISTANCE,
    bias: float | None = None,
    setpoint: float | None = None,
    speed: float | None = None,
    session_uid: str | None = None,
    md: dict[str, Any] | None = None,
    mask: AreaMask | None = None,
) -> MsgGenerator[int]:
    """Scan ``n_images`` frames along DeepSPM's spiral-closest path, in one run.

    Cells of 10 nm form the approach-area mask (:class:`~spm_bluesky.domain.area.AreaMask`); each
    frame is centred on the free cell minimising ``max(|i|, |j|) + distance`` within
    ``max_distance`` of the last frame, after which a disc of ``block_radius`` (default:
    half the frame size) around it is blocked. ``mask`` is the mask to go on with (in
    memory, updated in place, e.g. shared with ``tip_action``); with ``mask_path`` the mask
    is also loaded from and saved to that JSON file after every image, so a restarted
    session goes on where it stopped (a mask from another approach area is replaced by a
    fresh one). The file is checked writable before anything is written.

    One event per image in the ``primary`` stream. Stops early, still successfully, when no
    free cell is left in reach (then move to a fresh area). Returns the number of images.
    """
    check_stm(stm)
    check_count("n_images", n_images)
    limits.check_frame(0.0, 0.0, size, pixels)
    check_scan_settings(bias, setpoint, speed)
    radius = size / 2 if block_radius is None else block_radius
    if not 0 <= radius <= limits.APPROACH_AREA_SIZE:
        raise ValueError(f"block_radius={block_radius!r} m must be between 0 and the area size")
    if not max_distance > 0:
        raise ValueError(f"max_distance={max_distance!r} m must be positive")
    mask_file = check_mask_path(mask_path)

    mask = yield from area_mask(stm, mask, mask_file)
    plan_args = {"n_images": n_images, "size": size, "pixels": pixels, "mask_path": mask_path,
                 "block_radius": block_radius, "max_distance": max_distance, "bias": bias,
                 "setpoint": setpoint, "speed": speed}
    run_md = yield from run_metadata(stm, schema.SURVEY, plan_args, session_uid, md)
    run_md["num_points"] = n_images
    run_md[schema.AREA_MASK] = {"path": mask_path, "area_index": mask.area_index,
                                "cell_size": mask.cell_size, "free_cells": mask.free_cells,
                                "start_position": list(mask.position), "block_radius": radius}
    settings = FrameSettings(size, pixels, bias, setpoint, speed)
    taken = 0

    def images() -> MsgGenerator[None]:
        nonlocal taken
        for _ in range(n_images):
            cell = mask.next_cell(margin=size / 2, max_distance=max_distance)
            if cell is None:
                break
            x, y = cell
            limits.check_frame(x, y, size, pixels)
            yield from bps.checkpoint()
            yield from take_frame(stm, mask, x, y, radius, mask_file,
                                  settings if taken == 0 else None)
            taken += 1

    yield from bpp.run_wrapper(images(), md=run_md)
    return taken


__all__ = ["acquire_image", "set_frame", "survey"]
