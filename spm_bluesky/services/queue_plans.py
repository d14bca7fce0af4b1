"""Plans of the RunEngine session whose models are named by string (profile and queueserver).

The queueserver passes plan arguments as JSON: a device by its global name, everything else
as numbers and strings. :func:`autonomous_session` therefore takes the assessor and the
policy by name and looks them up in the registries
(:func:`~spm_bluesky.ml.assessor.assessor.assessor_by_name`,
:func:`~spm_bluesky.ml.agent.policies.policy_by_name`) before the session's first message;
every other parameter is :func:`spm_bluesky.plans.autonomous.autonomous_session`'s.

No ``from __future__ import annotations`` here: the queueserver reads the annotations as
objects.
"""

import inspect
from typing import Any

from bluesky.utils import MsgGenerator

from spm_bluesky.devices.stm import STM
from spm_bluesky.ml.card import SHIPPED
from spm_bluesky.plans import autonomous


def autonomous_session(
    stm: STM,
    assessor: str = SHIPPED,
    policy: str = "heuristic",
    policy_seed: int = 0,
    **options: Any,
) -> MsgGenerator[dict[str, Any]]:
    """DeepSPM's autonomous loop with the assessor and the policy named by string.

    ``assessor`` is ``"shipped"`` (the shipped weights) or the path of a weight file;
    ``policy`` one of ``"agent"`` (the shipped agent), ``"heuristic"`` or ``"random"``
    (seeded with ``policy_seed``). The other parameters (``images``, ``hours``,
    ``session_uid``, ``bad_limit`` ...) are those of
    :func:`spm_bluesky.plans.autonomous.autonomous_session`, except ``resume_state``.
    Names are checked and the models loaded before the first message. Returns the
    session's counters.
    """
    from spm_bluesky.ml.agent.policies import INSTRUMENT_POLICIES, policy_by_name
    from spm_bluesky.ml.assessor.assessor import assessor_by_name

    if policy not in INSTRUMENT_POLICIES:
        raise ValueError(f"policy={policy!r} must be one of {', '.join(INSTRUMENT_POLICIES)}")
    if "resume_state" in options:
        raise TypeError("resume_state cannot be named by string: resume with "
                        "`spm-bluesky run --resume` or the plan itself")
    chosen = policy_by_name(policy, seed=policy_seed)
    return (yield from autonomous.autonomous_session(stm, assessor_by_name(assessor), chosen,
                                                     **options))


def _named_signature() -> inspect.Signature:
    """This plan's parameters, then the session's own (keyword-only) ones, for the
    queueserver, which validates a queued plan against the signature."""
    own = list(inspect.signature(autonomous_session).parameters.values())[:-1]
    session = inspect.signature(autonomous.autonomous_session).parameters.values()
    rest = [p for p in session if p.kind is inspect.Parameter.KEYWORD_ONLY
            and p.name != "resume_state"]
    return inspect.Signature([*own, *rest],
                             return_annotation=MsgGenerator[dict[str, Any]])


autonomous_session.__signature__ = _named_signature()  # type: ignore[attr-defined]
