"""``spm-bluesky train assessor`` and ``spm-bluesky train agent`` (torch loads on use).

Both rewrite the shipped weights by default and write the model card beside them.
"""

from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from spm_bluesky.commandline._catalog import (
    Catalog,
    CatalogUnavailable,
    SessionLookupError,
    open_catalog,
    resolve_session,
)
from spm_bluesky.commandline._common import (
    ApiKeyFile,
    DataDir,
    existing_file,
    fail,
    non_negative_int,
    positive_float,
    positive_int,
    usage_error,
)
from spm_bluesky.commandline.report import TILED_URI_HELP
from spm_bluesky.ml.agent.card import CARD_EPISODES
from spm_bluesky.ml.assessor.config import GateConfig, GoodWeightOn, TrainConfig
from spm_bluesky.ml.assessor.synth.config import FAMILY_NAMES
from spm_bluesky.ml.card import GATE, GENERALIST, WEIGHTS, WEIGHTS_DIR
from spm_bluesky.services.credentials import CredentialsError, tiled_api_key
from spm_bluesky.services.launch import data_dir_from

train_app = typer.Typer(no_args_is_help=True, help="Train a model from twin data.")
_DEFAULTS = TrainConfig()
_GATE = GateConfig()
#: Options of training from rendered images, which a fine-tune from Tiled has no use for.
_TRAINING_ONLY = ("images", "synth_images", "leave_out", "visible_ghosts", "scale_free",
                  "good_weight", "good_weight_on", "width", "data", "workers")


@train_app.command("assessor")
def train_assessor(
    ctx: typer.Context,
    out: Path = typer.Option(WEIGHTS, help="weight file to write",
                             show_default="the shipped assessor.pt"),
    seed: int = typer.Option(_DEFAULTS.seed, parser=non_negative_int,
                             help="seed of data, init and augmentation"),
    images: int = typer.Option(_DEFAULTS.images, parser=positive_int,
                               help="twin training images"),
    synth_images: int = typer.Option(
        _DEFAULTS.synth_images, parser=non_negative_int,
        help="synthetic training frames (other surfaces, real-looking tip defects and noise)"),
    leave_out: str | None = typer.Option(
        None, metavar="FAMILY", show_default=False,
        help="train without this synthetic surface family (to test on it): "
             + ", ".join(FAMILY_NAMES)),
    visible_ghosts: bool = typer.Option(
        _DEFAULTS.synth.visible_ghosts, "--visible-ghosts",
        help="label a synthetic frame multi_apex only if its ghost shows (off for the "
             "shipped weights)"),
    scale_free: bool = typer.Option(
        _DEFAULTS.scale_free, "--scale-free",
        help="the network rescales each window by its own height range (not an absolute "
             "1 A scale); off for the shipped weights"),
    good_weight: float = typer.Option(
        _DEFAULTS.good_weight, parser=positive_float,
        help="loss weight of the good class: 4 gives good and the four bad classes together "
             "equal weight, so p(good) = 0.5 means even odds of good against bad"),
    good_weight_on: GoodWeightOn = typer.Option(
        _DEFAULTS.good_weight_on.value, case_sensitive=False,
        help="which good frames --good-weight weights: all, or only the synthetic ones (the "
             "twin's frames keep their own odds)"),
    width: float = typer.Option(
        _DEFAULTS.width, parser=positive_float,
        help="scale every layer's channel count by this (1: the shipped network's 32 to 128 "
             "channels; the weight file records the widths in its shapes)"),
    epochs: int | None = typer.Option(
        None, parser=positive_int,
        show_default=f"{_DEFAULTS.epochs}; with --from-tiled the fine-tune's own",
        help="epochs"),
    data: Path | None = typer.Option(
        None, help="directory to keep the rendered sets in (.npz shards) and reuse",
        show_default=False),
    workers: int = typer.Option(_DEFAULTS.workers, parser=positive_int,
                                help="processes rendering twin images"),
    from_tiled: bool = typer.Option(
        False, "--from-tiled",
        help="fine-tune an assessor (--weights) on labelled images stored in Tiled instead "
             "(labels made in the console, or --labels FILE); needs --out"),
    weights: Path | None = typer.Option(
        None, callback=existing_file, show_default=False,
        help="with --from-tiled: the assessor to fine-tune: a weight file, or a gate file "
             "whose generalist is fine-tuned (default: the shipped gate's generalist)"),
    session: str | None = typer.Option(
        None, show_default=False,
        help="with --from-tiled: only this session's labels (its uid or a unique prefix)"),
    labels: Path | None = typer.Option(
        None, callback=existing_file, show_default=False,
        help="with --from-tiled: labels from this JSON or CSV file (run_uid, seq_num, "
             "label) instead of those stored in Tiled"),
    max_labels: int | None = typer.Option(
        None, parser=positive_int, show_default=False,
        help="with --from-tiled: use at most this many labels (a seeded choice)"),
    data_dir: Path = DataDir,
    tiled_uri: str | None = typer.Option(None, help=TILED_URI_HELP, show_default=False),
    api_key_file: Path | None = ApiKeyFile,
) -> int:
    """Train the CNN tip-quality assessor (rewrites the shipped weights), or fine-tune one.

    Render twin images, train, calibrate and evaluate the assessor; write the weights and
    their model card. The same seed gives the same weights. With --from-tiled, fine-tune
    from labelled images stored in Tiled and write new weights and their card to --out.
    """
    from spm_bluesky.ml.assessor.training import train

    finetune_only = {"--weights": weights, "--session": session, "--labels": labels,
                     "--max-labels": max_labels, "--tiled-uri": tiled_uri,
                     "--api-key-file": api_key_file}
    if from_tiled:
        for name in _TRAINING_ONLY:
            # By name: typer carries its own click, whose ParameterSource it does not export.
            source = ctx.get_parameter_source(name)
            if source is not None and source.name == "COMMANDLINE":
                raise usage_error("--" + name.replace("_", "-"),
                                  "does not apply with --from-tiled: a fine-tune learns from "
                                  "labelled images in Tiled, not from rendered ones")
        return _finetune_from_tiled(
            out, weights, seed, epochs, session, labels, max_labels, data_dir, tiled_uri,
            api_key_file)
    for option, value in finetune_only.items():
        if value is not None:
            raise usage_error(option, "only applies with --from-tiled")
    epochs = _DEFAULTS.epochs if epochs is None else epochs
    if leave_out is not None and leave_out not in FAMILY_NAMES:
        raise fail(f"--leave-out {leave_out!r} is not a surface family; one of "
                   f"{', '.join(FAMILY_NAMES)}", 2)
    config = TrainConfig(seed=seed, images=images, epochs=epochs, workers=workers,
                         synth_images=synth_images, scale_free=scale_free,
                         synth_validation_images=synth_images // 10, good_weight=good_weight,
                         good_weight_on=good_weight_on, width=width)
    if leave_out is not None:
        config = replace(config, synth=config.synth.without(leave_out))
    if visible_ghosts:
        config = replace(config, synth=replace(config.synth, visible_ghosts=True))
    result = train(config, out=out, data_dir=data, progress=True)
    print(f"wrote {result.weights} ({result.model_id}), card {result.card}; "
          f"temperature {result.temperature:.3f}; {result.wall_time_s:.0f} s")
    return 0


def _finetune_from_tiled(out: Path, weights: Path | None, seed: int, epochs: int | None,
                         session: str | None, labels_file: Path | None,
                         max_labels: int | None, data_dir: Path, tiled_uri: str | None,
                         api_key_file: Path | None) -> int:
    """``train assessor --from-tiled``: read the labels and their images, fine-tune, write the
    weights and card. Every check (catalog, labels, images, classes) comes before writing."""
    import httpx

    from spm_bluesky.ml.assessor import finetune as ft
    from spm_bluesky.storage import LabelError, read_labels
    from spm_bluesky.storage.labels import label_run_uids

    shipped = {path.resolve(): path.name for path in (WEIGHTS, GENERALIST, GATE)}
    if out.resolve() in shipped:
        raise fail(f"--from-tiled writes new weights: give --out PATH (the shipped "
                   f"{shipped[out.resolve()]} is never overwritten by a fine-tune)", 2)
    if session and labels_file:
        raise usage_error("--session", "selects stored labels; not with --labels FILE")
    try:
        with open_catalog(data_dir, tiled_uri, api_key_file) as catalog:
            client = catalog.client
            uid = resolve_session(catalog, session) if session else None
            if labels_file is not None:
                chosen = ft.labels_from_file(labels_file)
                sessions: tuple[str, ...] = ()
                runs: tuple[str, ...] = ()
            else:
                stored = read_labels(client, uid)
                chosen = [ft.FrameLabel.of(label) for label in stored]
                sessions = tuple(sorted({label.session_uid for label in stored}))
                runs = tuple(label_run_uids(client, uid))
            given = len(chosen)
            usable = _choose(ft.usable_labels(chosen), max_labels, seed)
            if not usable:
                where = f" for session {uid}" if uid else ""
                raise ft.FinetuneError(
                    f"no labels to fine-tune on in {catalog.where}{where}"
                    + (f" ({given} given, all unclear)" if given else
                       ": label images in the console, or give --labels FILE"))
            frames = ft.frames_from_tiled(client, usable)
            source = ft.LabelSource(tiled_uri or str(client.uri), sessions, runs,
                                    str(labels_file) if labels_file else None, given)
    except (CatalogUnavailable, SessionLookupError, LabelError, ft.FinetuneError) as err:
        raise fail(str(err), 2) from None
    except (httpx.HTTPError, OSError) as err:
        raise fail(f"cannot read from Tiled ({tiled_uri or data_dir}): {err}", 2) from None
    config = ft.FinetuneConfig(seed=seed)
    if epochs is not None:
        config = replace(config, epochs=epochs)
    command = _finetune_command(out, weights, seed, config.epochs, uid, labels_file,
                                max_labels)
    try:
        result = ft.finetune_and_write(weights, frames, config, out, source, command)
    except ft.FinetuneError as err:
        raise fail(str(err), 2) from None
    print(f"fine-tuned on {result.n_train} labelled images, {result.n_held_out} held out")
    for name, figures in (("before", result.before), ("after", result.after)):
        print(f"  {name:6s} balanced accuracy {figures.balanced_accuracy:.3f}, AUC "
              f"{figures.auc:.3f} (held-out: {figures.n_good} good, {figures.n_bad} bad)")
    print(f"wrote {result.weights} ({result.model_id}), card {result.card}; "
          f"{result.wall_time_s:.0f} s")
    return 0


def _choose(labels: list[Any], most: int | None, seed: int) -> list[Any]:
    """At most ``most`` of ``labels`` (a seeded choice, in their order), or all."""
    if most is None or len(labels) <= most:
        return labels
    import numpy as np

    keep = np.random.default_rng([seed, 4141]).choice(len(labels), most, replace=False)
    return [labels[i] for i in sorted(keep)]


def _finetune_command(out: Path, weights: Path | None, seed: int, epochs: int,
                      session: str | None, labels_file: Path | None,
                      max_labels: int | None) -> str:
    """The command line of a fine-tune (for its card; the catalog options are left out)."""
    parts = ["spm-bluesky train assessor --from-tiled", f"--seed {seed}", f"--epochs {epochs}"]
    optional = {"--weights": weights, "--session": session, "--labels": labels_file,
                "--max-labels": max_labels}
    parts += [f"{option} {value}" for option, value in optional.items() if value is not None]
    return " ".join([*parts, f"--out {out}"])


@train_app.command("unsure")
def train_unsure(
    weights: Path = typer.Option(WEIGHTS, callback=existing_file,
                                 help="the assessor's weight file to calibrate",
                                 show_default="the shipped assessor.pt"),
    seed: int = typer.Option(0, parser=non_negative_int, help="seed of the twin frames"),
    images: int = typer.Option(3_000, parser=positive_int,
                               help="twin training frames: the class statistics"),
    validation_images: int = typer.Option(3_000, parser=positive_int,
                                          help="twin validation frames: the threshold"),
    data: Path | None = typer.Option(
        None, help="directory to keep the rendered sets in (.npz shards) and reuse",
        show_default=False),
    workers: int = typer.Option(2, parser=positive_int, help="rendering processes"),
) -> None:
    """Calibrate when the assessor is unsure of an image (regenerates <weights>.unsure.npz).

    Training calibrates new weights itself; this calibrates existing ones, such as the
    shipped weights, and records the figures in their model card.
    """
    from spm_bluesky.ml.assessor.training import calibrate_weights

    calibration = calibrate_weights(weights, seed, images, validation_images, data, workers)
    print(f"wrote the unsure calibration of {calibration.model_id} beside {weights}: "
          f"threshold {calibration.threshold:.4g} (quantile {calibration.quantile:g} of "
          f"{calibration.threshold_frames} validation frames; {calibration.twin_rate:.1%} "
          "of them unsure)")


@train_app.command("gate")
def train_gate(
    generalist: Path = typer.Option(
        GENERALIST, callback=existing_file, show_default="the shipped generalist.pt",
        help="the generalist's weight file (spm-bluesky train assessor --synth-images ...)"),
    out: Path = typer.Option(GATE, show_default="the shipped gate.npz",
                             help="the gate file to write (.npz; its card goes beside it)"),
    specialist: Path = typer.Option(WEIGHTS, callback=existing_file,
                                    help="the specialist's weight file",
                                    show_default="the shipped assessor.pt"),
    seed: int = typer.Option(_GATE.seed, parser=non_negative_int,
                             help="base of the validation sets the gate is fitted on"),
    fit_frames: int = typer.Option(_GATE.fit_frames, parser=positive_int,
                                   help="twin frames and synthetic frames fitted on (each)"),
    threshold: float = typer.Option(
        _GATE.threshold, parser=positive_float,
        help="frames with p(twin) under this go to the generalist (0 to 1)"),
    data: Path | None = typer.Option(
        None, help="directory to keep the rendered sets in (.npz shards) and reuse",
        show_default=False),
    workers: int = typer.Option(_GATE.workers, parser=positive_int,
                                help="processes rendering twin images"),
) -> None:
    """Fit the gate of a gated assessor: the specialist judges images like the twin's, the
    generalist the rest.

    The gate learns on the specialist's features to tell twin validation frames from
    synthetic ones (no real image), then the pair is measured on held-out twin and synthetic
    frames for its model card. Use the gate file wherever an assessor's weight file goes
    (--assessor, eval assessor --weights).
    """
    from spm_bluesky.ml.assessor.gate_training import card_summary
    from spm_bluesky.ml.assessor.gate_training import train_gate as fit_gate
    from spm_bluesky.ml.card import read_card

    if out.suffix != ".npz":
        raise usage_error("--out", f"a gate file ends in .npz, not {out.name!r}")
    if not 0 < threshold < 1:
        raise usage_error("--threshold", f"{threshold:g} is not between 0 and 1")
    if specialist.resolve() == generalist.resolve():
        raise fail("--specialist and --generalist are the same file: a gate needs two "
                   "networks", 2)
    config = GateConfig(seed=seed, fit_frames=fit_frames, threshold=threshold, workers=workers)
    try:
        result = fit_gate(generalist, out, specialist, config, data, progress=True)
    except (ValueError, RuntimeError) as err:  # a file that is not an assessor's weights
        raise fail(f"cannot fit the gate: {err}", 2) from None
    print(f"wrote {result.gate} ({result.model_id}), card {result.card}; "
          f"{card_summary(read_card(result.gate))}; {result.wall_time_s:.0f} s")


@train_app.command("agent")
def train_agent(
    out: Path = typer.Option(WEIGHTS_DIR / "agent.pt", help="weight file",
                             show_default="the shipped agent.pt"),
    assessor: Path = typer.Option(
        GATE, callback=existing_file, show_default="the shipped gate.npz",
        help="the assessor: its verdicts are the reward, and the agent's body starts from its "
             "network (a gate file's specialist)"),
    seed: int = typer.Option(0, parser=non_negative_int, help="seed"),
    steps: int | None = typer.Option(
        None, parser=non_negative_int, show_default=False,
        help="twin environment steps (default: 20000; 0 with --from-tiled)"),
    from_tiled: str | None = typer.Option(
        None, metavar="URI", show_default=False,
        help="go on from --weights with a replay buffer rebuilt from the condition_tip runs "
             "stored at this Tiled URI"),
    api_key_file: Path | None = ApiKeyFile,
    session: str | None = typer.Option(
        None, show_default=False,
        help="with --from-tiled: only this session's runs (its uid or a unique prefix)"),
    weights: Path | None = typer.Option(
        None, callback=existing_file, show_default=False,
        help="with --from-tiled: the agent to go on from (default: shipped)"),
    updates: int = typer.Option(2000, parser=non_negative_int,
                                help="with --from-tiled: updates on the stored transitions"),
    eval_episodes: int = typer.Option(CARD_EPISODES, parser=positive_int,
                                      help="held-out episodes for the card"),
    eval_seed: int = typer.Option(1, parser=non_negative_int,
                                  help="held-out seed for the card"),
) -> int:
    """Train the Double DQN conditioning agent (rewrites the shipped weights).

    Train the agent on twin episodes, evaluate it against random, heuristic and oracle
    policies, write the weights and their model card.
    """
    from spm_bluesky.ml.agent.card import AgentTraining, build_agent_card, write_agent_card
    from spm_bluesky.ml.agent.dqn import MODEL_NAME, AgentNet, DQNConfig, config_dict, train_dqn
    from spm_bluesky.ml.agent.env import ConditioningEnv, episode_seed
    from spm_bluesky.ml.agent.evaluation import baseline_factories, evaluate, format_report, goals
    from spm_bluesky.ml.assessor.assessor import load_assessor, serialise
    from spm_bluesky.ml.card import model_id_for

    api_key = None
    if from_tiled:
        try:
            api_key = tiled_api_key(key_file=api_key_file, data_dir=data_dir_from(None),
                                    uri=from_tiled)
        except CredentialsError as err:
            raise fail(str(err)) from None
        if not api_key:
            raise fail("--from-tiled needs the server's API key: --api-key-file or "
                       "$SPM_TILED_API_KEY", 2)
        from spm_bluesky.storage import unreachable

        if why := unreachable(from_tiled):
            raise fail(f"cannot read from Tiled at {from_tiled}: {why}", 2)
    model = load_assessor(assessor)
    if steps is None:
        steps = 0 if from_tiled else DQNConfig().env_steps
    config = DQNConfig(seed=seed, env_steps=steps)
    learner = None
    if from_tiled and api_key:
        net, learner, stored = _replay_from_tiled(from_tiled, api_key, session, weights,
                                                  updates, config)
        config = learner.config
        source = f"{stored} stored transitions from {from_tiled}, then {steps} twin steps"
    else:
        net = AgentNet.from_assessor(assessor, seed)
        source = "twin episodes from degraded tips (DeepSPM training mode)"
    result = train_dqn(ConditioningEnv(model), net, config,
                       lambda k: episode_seed(seed, k, 0), learner, progress=True)
    data = serialise(net)
    out.write_bytes(data)
    model_id = model_id_for(MODEL_NAME, data)
    result.agent.model_id = model_id
    print(f"wrote {out} ({model_id}); {result.env_steps} env steps, {result.episodes} "
          f"episodes, {result.wall_time_s:.0f} s")
    report = evaluate(model, {"agent": lambda env: result.agent,
                              **baseline_factories(eval_seed)},
                      eval_episodes, eval_seed, progress=True)
    print(format_report(report))
    training = AgentTraining(seed=seed, steps=steps, eval_episodes=eval_episodes,
                             eval_seed=eval_seed, source=source, from_tiled=from_tiled)
    card = build_agent_card(
        weights=out, data=data, model_id=model_id, assessor_file=assessor.name,
        assessor_model_id=model.model_id, training=training, config=config_dict(config),
        env_steps=result.env_steps, episodes=result.episodes,
        wall_time_s=result.wall_time_s, threads=config.threads, report=report,
        goals=goals(report))
    write_agent_card(card, out)
    return 0


def _replay_from_tiled(uri: str, api_key: str, session: str | None, weights: Path | None,
                       updates: int, config: Any) -> tuple[Any, Any, int]:
    """The agent to go on from, its learner with the stored transitions, and how many.

    Learning starts as soon as the stored transitions are in (``learning_starts`` is the
    buffer size), then ``updates`` gradient steps are taken on them alone; twin steps
    after that explore no more than the trained agent would.
    """
    from dataclasses import replace

    from tqdm import tqdm

    from spm_bluesky.ml.agent.dqn import Learner, load_agent
    from spm_bluesky.ml.agent.from_tiled import conditioning_runs, fill_replay, transitions_from_run
    from spm_bluesky.storage import connect

    agent = load_agent(weights)
    client = connect(uri, api_key)
    if session:
        try:
            session = resolve_session(Catalog(client, f"Tiled at {uri}", f" --tiled-uri {uri}"),
                                      session)
        except SessionLookupError as err:
            raise fail(str(err)) from None
    transitions = []
    for run in tqdm(list(conditioning_runs(client, session)), desc="read runs", unit="run"):
        transitions += transitions_from_run(run)
    if not transitions:
        raise fail(f"no conditioning steps stored at {uri}"
                   + (f" for session {session}" if session else ""))
    learner = Learner(agent.net, config)
    stored = fill_replay(learner, agent, transitions)
    learner.config = replace(config, learning_starts=learner.replay.size,
                             epsilon_start=config.epsilon_end)
    agent.net.train()
    for _ in tqdm(range(updates), desc="learn from stored", unit="update"):
        learner.update()
    agent.net.eval()
    print(f"{stored} transitions from {uri}; {updates} updates, last loss "
          f"{learner.losses[-1] if learner.losses else float('nan'):.4f}")
    return agent.net, learner, stored
