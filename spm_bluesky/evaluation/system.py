"""The systems a session can run and what every evaluation needs around a session.

A system is an assessor and a conditioning policy (:class:`System`); :func:`build_system`
builds one by name through the registries (:func:`~spm_bluesky.ml.agent.policies.policy_by_name`,
:func:`~spm_bluesky.ml.assessor.assessor.load_assessor`). :func:`check_agent` checks the agent's
weights before anything starts, and :func:`release_ca` closes this process's Channel Access
channels before their IOC goes away. The session comparison and the demo both use these.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from spm_bluesky.ml.agent.policies import (
    OracleAssessor,
    agent_weights,
    policy_by_name,
)
from spm_bluesky.protocols import Assessor, Policy

#: How a message about missing agent weights ends in the session comparison.
EVAL_HINT = "or leave 'full' out (e.g. --systems random,heuristic,oracle)"


class System(StrEnum):
    """The systems the session comparison runs: each is an assessor and a policy."""

    #: The shipped assessor and the trained agent.
    FULL = "full"
    #: The shipped assessor and a uniformly random policy.
    RANDOM = "random"
    #: The shipped assessor and the scripted escalation.
    HEURISTIC = "heuristic"
    #: An assessor and a policy that read the twin's true tip class.
    ORACLE = "oracle"

    @property
    def policy(self) -> str:
        """The name of the system's policy in the registry."""
        return "agent" if self is System.FULL else self.value


def check_agent(agent_path: Path | str | None = None, hint: str = EVAL_HINT) -> Path:
    """The agent weight file the full system would use; MissingAgentError if absent.

    ``hint`` ends the message: what else the user can do.
    """
    return agent_weights(agent_path, hint)


def build_system(system: System, truth: Callable[[], str] | None, seed: int,
                 assessor_path: Path | str | None = None,
                 agent_path: Path | str | None = None) -> tuple[Assessor, Policy]:
    """The assessor and the policy of ``system`` (torch loads here, for the learnt models).

    ``truth`` (e.g. a :class:`~spm_bluesky.evaluation.twin_pvs.TruthReader`) is needed by
    the oracle only.
    """
    if system is System.ORACLE:
        if truth is None:
            raise ValueError("the oracle needs the twin's truth (a TruthReader)")
        return OracleAssessor(truth), policy_by_name(system.policy, truth=truth)
    from spm_bluesky.ml.assessor.assessor import load_assessor

    agent = check_agent(agent_path) if system is System.FULL else None
    return load_assessor(assessor_path), policy_by_name(system.policy, seed=seed, agent=agent)


def release_ca() -> None:
    """Close this process's Channel Access channels (aioca) before their IOC stops.

    Otherwise libca prints a "Virtual circuit disconnect" warning for every IOC that goes
    away while channels to it are open.
    """
    import aioca

    aioca.purge_channel_caches()
