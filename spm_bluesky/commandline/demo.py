"""``spm-bluesky demo`` and ``spm-bluesky gallery``: the system shown on the digital twin."""

from pathlib import Path
from typing import cast

import typer

from spm_bluesky.commandline._common import (
    DataDir,
    choice,
    fail,
    non_negative_int,
    positive_float,
)
from spm_bluesky.ml.agent.policies import INSTRUMENT_POLICIES

#: ``demo --backend``: the values of :data:`spm_bluesky.evaluation.demo.BACKENDS` (spelled
#: here so that ``--help`` does not import the evaluation code).
DEMO_BACKENDS = ("twin", "nanonis-sim")


def demo_command(
    hours: float = typer.Option(2.0, parser=positive_float, help="simulated hours"),
    seed: int = typer.Option(0, parser=non_negative_int, help="twin seed"),
    data_dir: Path = DataDir,
    out: Path | None = typer.Option(None, help="report directory (default: <data dir>/reports)",
                                    show_default=False),
    policy: str = typer.Option("agent", parser=choice(*INSTRUMENT_POLICIES),
                               metavar="[" + "|".join(INSTRUMENT_POLICIES) + "]",
                               help="conditioning policy (default: the trained agent)",
                               show_default=False),
    agent: Path | None = typer.Option(None, help="agent weights (default: shipped)",
                                      show_default=False),
    assessor: Path | None = typer.Option(None, help="assessor weights (default: shipped)",
                                         show_default=False),
    backend: str = typer.Option("twin", parser=choice(*DEMO_BACKENDS),
                                metavar="|".join(DEMO_BACKENDS),
                                help="behind the PVs: the IOC's twin, or the Nanonis simulator "
                                     "(started too) behind a Nanonis IOC"),
) -> int:
    """Start the IOC and Tiled, run an accelerated autonomous session, report.

    Starts the twin's IOC and the embedded Tiled server, runs an autonomous session at full
    speed with a live progress line, writes the report and stops the services (also on
    Ctrl-C). With --backend nanonis-sim the IOC talks the Nanonis protocol to the Nanonis
    simulator; the plans and devices are the same.
    """
    from spm_bluesky.evaluation.demo import BackendName, DemoOptions, PolicyName, run_demo
    from spm_bluesky.ml.agent.policies import MissingAgentError
    from spm_bluesky.services.launch import ServiceError

    options = DemoOptions(
        data_dir=data_dir, hours=hours, seed=seed, out_dir=out.resolve() if out else None,
        policy=cast(PolicyName, policy), agent=agent, assessor=assessor,
        backend=cast(BackendName, backend))
    try:
        result = run_demo(options)
    except (ValueError, MissingAgentError, ServiceError) as err:
        raise fail(str(err)) from None
    tally = result.tally
    print(f"{'interrupted' if result.interrupted else 'done'} after {result.wall_s:.0f} s: "
          f"{tally.simulated_hours:.2f} simulated h, {tally.images} images, {tally.kept} kept "
          f"({tally.truly_good} with a truly good tip), "
          f"{_counted(tally.episodes, 'conditioning episode', 'conditioning episodes')}, "
          f"{_counted(tally.actions, 'tip action', 'tip actions')}, "
          f"{_counted(tally.crashes, 'crash', 'crashes')}")
    print(f"report: {result.report.html}\n        {result.report.png}")
    print(f"again from Tiled: spm-bluesky report {result.session_uid} --data-dir "
          f"{options.data_dir}")
    return 130 if result.interrupted else 0


def gallery_command(
    out: Path = typer.Option(Path("gallery.png"), help="PNG to write"),
    seed: int = typer.Option(0, parser=non_negative_int, help="twin seed"),
) -> int:
    """Render one twin image per tip class and each action's before/after."""
    from spm_bluesky.evaluation.gallery import render_gallery

    written = render_gallery(out, seed=seed)
    print(f"wrote {written}: one image per tip class and each action's before/after")
    return 0


def add_commands(app: typer.Typer) -> None:
    """Add ``demo`` and ``gallery`` to ``app``."""
    app.command("demo")(demo_command)
    app.command("gallery")(gallery_command)


def _counted(count: int, one: str, many: str) -> str:
    """``1 action``, ``2 actions``: the summary line reads as a sentence."""
    return f"{count} {one if count == 1 else many}"
