"""The conditioning agent: empty squares, the Gymnasium env, policies, the evaluation
harness, Double DQN mechanics and (with the shipped weights) the agent's quality."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spm_bluesky.domain import processing
from spm_bluesky.domain.actions import ACTIONS, action_mask
from spm_bluesky.ml.agent.dqn import (
    AgentNet,
    DQNAgent,
    DQNConfig,
    Learner,
    augmentations,
    load_agent,
    masked_argmax,
)
from spm_bluesky.ml.agent.env import ConditioningEnv, EnvConfig, episode_seed
from spm_bluesky.ml.agent.evaluation import (
    baseline_factories,
    evaluate,
    goals,
    oracle_for,
    run_episode,
    write_json,
)
from spm_bluesky.ml.agent.policies import ESCALATION, HeuristicPolicy, RandomPolicy
from spm_bluesky.ml.assessor.assessor import serialise
from spm_bluesky.ml.assessor.model import TipNet, stages_for
from spm_bluesky.protocols import CLASSES, Assessment, encode_history
from spm_bluesky.twin.tip import TipClass

torch.set_num_threads(1)


class TruthAssessor:
    """A perfect assessor for testing env and harness logic: the env's true class, one-hot.

    The agent-quality test below uses the shipped assessor instead.
    """

    model_id = "truth"

    def __init__(self) -> None:
        self.env: ConditioningEnv | None = None

    def assess(self, image_m: np.ndarray, scan_size_m: float) -> Assessment:
        assert self.env is not None and image_m.shape == (64, 64)
        p = np.full(len(CLASSES), 0.0)
        p[CLASSES.index(self.env.true_class.value)] = 1.0
        return Assessment.from_vector(p, self.model_id)


def truth_env(max_actions: int = 100) -> ConditioningEnv:
    assessor = TruthAssessor()
    env = ConditioningEnv(assessor, EnvConfig(max_actions=max_actions))
    assessor.env = env
    return env


def brute_largest_square(empty: np.ndarray) -> int:
    best = 0
    n = empty.shape[0]
    for k in range(1, n + 1):
        for i in range(n - k + 1):
            for j in range(n - k + 1):
                if empty[i:i + k, j:j + k].all():
                    best = k
    return best


@pytest.mark.parametrize("seed", range(5))
def test_largest_empty_square_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    image = np.zeros((16, 16))
    image[rng.random((16, 16)) < 0.15] = 1e-10  # "molecules" 1 A tall on a flat plane
    size, (x, y) = processing.largest_empty_square(image, 16e-9)
    edge = brute_largest_square(image == 0)
    assert size == pytest.approx(edge * 1e-9)
    # The centre is the centre of an all-empty square of that edge.
    col0 = round(x / 1e-9 + 7.5 - (edge - 1) / 2)
    row0 = round(y / 1e-9 + 7.5 - (edge - 1) / 2)
    assert (image[row0:row0 + edge, col0:col0 + edge] == 0).all()


def test_largest_empty_square_of_an_all_covered_image_is_zero():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1e-10, (32, 32))
    assert processing.largest_empty_square(image, 10e-9)[0] < 1e-9


def test_history_encoding_is_most_recent_first_and_bounded():
    width = len(ACTIONS) + 1
    h = encode_history([(1, 0.1), (4, 0.2), (7, 0.3)], length=2)
    assert h.shape == (2 * width,)
    assert h[7] == 1 and h[width - 1] == pytest.approx(0.3)
    assert h[width + 4] == 1 and h[2 * width - 1] == pytest.approx(0.2)
    assert h.sum() == pytest.approx(2 + 0.5)
    assert not encode_history([], 2).any()


def test_env_episode_invariants_reward_and_masking():
    env = truth_env(max_actions=100)
    obs, info = env.reset(seed=episode_seed(0, 0, 1))
    assert env.observation_space.contains(obs)
    assert info["true_class"] != TipClass.GOOD.value
    assert list(info["action_mask"]) == action_mask(env._free_square[0])
    assert not info["action_mask"][ACTIONS.index(next(a for a in ACTIONS
                                                      if a.name == "pulse_+8.0V"))]
    masked = np.flatnonzero(~info["action_mask"])
    if masked.size:
        with pytest.raises(ValueError, match="masked"):
            env.step(int(masked[0]))
    spots = set()
    total, steps, terminated, truncated = 0.0, 0, False, False
    oracle = oracle_for(env)
    while not (terminated or truncated):
        decision = oracle.act(obs, info["action_mask"])
        assert info["action_mask"][decision.action]
        obs, reward, terminated, truncated, info = env.step(decision.action)
        steps += 1
        total += reward
        spots.add(info["frame"])
        assert reward == (9.0 if terminated else -1.0)
        assert env.observation_space.contains(obs)
        assert obs["history"][int(decision.action)] == 1.0
    assert terminated and info["true_class"] == "good" and env.actions_taken == steps
    assert len(spots) == steps  # every image at a fresh spot
    assert total == pytest.approx(10.0 - steps)
    assert info["damage"] >= 0.0


def test_env_truncates_at_the_action_cap_and_same_seed_same_episode():
    a, b = truth_env(max_actions=3), truth_env(max_actions=3)
    obs_a, _ = a.reset(seed=123)
    obs_b, _ = b.reset(seed=123)
    np.testing.assert_array_equal(obs_a["image"], obs_b["image"])
    stall = 0
    done = truncated = False
    steps = 0
    while not (done or truncated):
        _, _, done, truncated, _ = a.step(stall)
        steps += 1
    assert steps <= 3 and (done or a.actions_taken == 3)
    with pytest.raises(RuntimeError):
        ConditioningEnv(TruthAssessor()).step(0)


def test_heuristic_escalates_and_skips_masked_actions():
    policy = HeuristicPolicy()
    policy.reset()
    mask = np.array(action_mask(0.0))  # no empty square: pulses and stall only
    names = [ACTIONS[policy.act({}, mask).action].name for _ in range(6)]
    assert names == ["pulse_+2.5V", "pulse_+4.0V", "pulse_-2.5V", "pulse_-4.0V",
                     "pulse_-8.0V", "pulse_+2.5V"]
    policy.reset()
    full = np.ones(len(ACTIONS), bool)
    assert [ACTIONS[policy.act({}, full).action].name for _ in ESCALATION] == list(ESCALATION)
    rng_policy = RandomPolicy(0)
    picks = {rng_policy.act({}, mask).action for _ in range(200)}
    assert picks == set(np.flatnonzero(mask))


def test_harness_same_episodes_for_every_policy_and_json_shape(tmp_path):
    assessor = TruthAssessor()
    original = ConditioningEnv.__init__

    def bind(env, *args, **kwargs):
        original(env, *args, **kwargs)
        assessor.env = env

    ConditioningEnv.__init__ = bind
    try:
        report = evaluate(assessor, baseline_factories(0), episodes=20, seed=3)
    finally:
        ConditioningEnv.__init__ = original
    policies = report["policies"]
    assert set(policies) == {"random", "heuristic", "oracle"}
    for figures in policies.values():
        assert set(figures) == {"success_rate", "mean_actions", "ci95", "mean_bad_images",
                                "mean_damage", "false_good_rate"}
        # A perfect assessor never declares a bad tip good.
        assert figures["false_good_rate"] == 0.0
        lo, hi = figures["ci95"]
        assert lo <= figures["mean_actions"] <= hi
    # With a perfect assessor the oracle is far better than random (the twin's design goal).
    assert policies["oracle"]["success_rate"] == 1.0
    assert policies["oracle"]["mean_actions"] * 2.5 < policies["random"]["mean_actions"]
    assert policies["oracle"]["mean_actions"] < policies["heuristic"]["mean_actions"]
    path = tmp_path / "eval.json"
    write_json({**report, "policies": {"agent": policies["oracle"], **policies}}, path)
    loaded = json.loads(path.read_text())
    assert loaded["episodes"] == 20 and loaded["seed"] == 3
    assert goals(loaded)["agent / random"]["met"]
    # Same seed: the same episode for every policy (first image identical).
    env = truth_env()
    first = [env.reset(seed=episode_seed(3, 0, 1))[0]["image"] for _ in range(2)]
    np.testing.assert_array_equal(*first)
    assessor.env = env
    result = run_episode(env, oracle_for(env), episode_seed(3, 0, 1))
    assert result.success and result.bad_images >= 1


def test_dqn_masks_at_selection_and_in_the_target():
    torch.manual_seed(0)
    net = AgentNet()
    q = torch.tensor([[5.0, 1.0, 2.0], [0.0, 3.0, 9.0]])
    mask = torch.tensor([[False, True, True], [True, True, False]])
    assert masked_argmax(q, mask).tolist() == [2, 1]
    agent = DQNAgent(net)
    obs = {"image": np.zeros((64, 64), np.float32),
           "probabilities": np.full(5, 0.2, np.float32),
           "history": encode_history([]), "action_mask": np.zeros(len(ACTIONS), np.int8)}
    only = np.zeros(len(ACTIONS), bool)
    only[9] = True
    decision = agent.act(obs, only)
    assert decision.action == 9
    assert np.isinf(decision.values[0]) and np.isfinite(decision.values[9])
    # Target: the next state allows only one action, whose Q the update bootstraps from.
    learner = Learner(net, DQNConfig(learning_starts=1, batch_size=4))
    pooled = agent.pooled(augmentations(obs["image"]))
    assert pooled.shape == (4, net.width)
    learner.observe(agent, obs, 3, -1.0, {**obs, "action_mask": only.astype(np.int8)}, False,
                    pooled, pooled)
    assert learner.replay.size == 4 and learner.updates == 1
    assert learner.replay.next_mask[:4].sum() == 4
    # The body stays frozen (initialised from the assessor), only the head learns.
    assert all(not p.requires_grad for p in net.features.parameters())


def test_augmentations_are_rot180_and_flips():
    image = np.arange(16.0).reshape(4, 4)
    a = augmentations(image)
    np.testing.assert_array_equal(a[1], np.rot90(image, 2))
    np.testing.assert_array_equal(a[2], np.fliplr(image))
    np.testing.assert_array_equal(a[3], np.flipud(image))


def test_agent_weights_round_trip(tmp_path):
    net = AgentNet()
    path = tmp_path / "agent.pt"
    path.write_bytes(serialise(net))
    agent = load_agent(path)
    assert agent.model_id.startswith("dqn-agent-")
    for key, value in net.state_dict().items():
        torch.testing.assert_close(agent.net.state_dict()[key], value)


@pytest.mark.slow
def test_shipped_agent_beats_the_baselines_on_held_out_episodes():
    """The agent's goals on held-out episodes (the CLI and the card check 500): success and
    the ratio to the oracle on 100 episodes; the ratios to the random and heuristic policies,
    which take three times the actions and miss their goals by a wide margin (0.2 to 0.35
    against 0.5 and 0.8), on the first 30 of them, paired, for a third of the time."""
    from spm_bluesky.ml.assessor import load_assessor

    agent, assessor = load_agent(), load_assessor()
    baselines = baseline_factories(7)
    cheap = evaluate(assessor, {"agent": lambda env: agent, "oracle": baselines["oracle"]},
                     episodes=100, seed=7)
    costly = evaluate(assessor, {"agent": lambda env: agent, "random": baselines["random"],
                                 "heuristic": baselines["heuristic"]}, episodes=30, seed=7)
    met = {**goals(costly), **goals(cheap)}  # success on all 100 episodes
    assert met["success"]["value"] >= 0.95, cheap
    assert met["agent / random"]["met"] and met["agent / heuristic"]["met"], costly
    assert met["agent / oracle"]["value"] <= 1.6, cheap


def test_online_agent_learns_from_the_episodes_it_acts_in(tmp_path):
    """Each act() closes the previous transition, end_episode() the last one (terminal and
    +10 when the tip was declared good); updates start once the buffer is warm and change
    the head, and the saved weights load as an agent."""
    from spm_bluesky.ml.agent.online import OnlineAgent
    from spm_bluesky.protocols import LearningPolicy

    torch.manual_seed(0)
    net = AgentNet()
    before = {k: v.clone() for k, v in net.head.state_dict().items()}
    online = OnlineAgent(DQNAgent(net, "start"), DQNConfig(learning_starts=16),
                         save_to=tmp_path / "online.pt")
    assert isinstance(online, LearningPolicy)
    env = truth_env(max_actions=6)
    actions = terminal = 0
    for episode in range(4):
        obs, info = env.reset(seed=episode_seed(5, episode, 0))
        online.reset(episode)
        done = truncated = False
        while not (done or truncated):
            decision = online.act(obs, info["action_mask"])
            obs, _, done, truncated, info = env.step(decision.action)
            actions += 1
        online.end_episode(obs, done)
        terminal += int(done)
    replay = online.learner.replay
    assert online.transitions == actions and replay.size == 4 * actions
    assert replay.done[:replay.size].sum() == 4 * terminal
    assert sorted(set(replay.reward[:replay.size].tolist())) == (
        [-1.0, 9.0] if terminal else [-1.0])
    assert online.learner.updates == actions - 16 // 4 + 1  # one per transition once warm
    assert any(not torch.equal(before[k], v) for k, v in net.head.state_dict().items())
    assert online.model_id == f"start+online{actions}"
    saved = load_agent(tmp_path / "online.pt")
    for key, value in net.state_dict().items():
        torch.testing.assert_close(saved.net.state_dict()[key], value)


def test_training_is_reproducible():
    """The same seed gives bit-identical weights (so `train agent` regenerates agent.pt)."""
    from spm_bluesky.ml.agent.dqn import train_dqn
    from spm_bluesky.ml.card import WEIGHTS

    def train() -> bytes:
        config = DQNConfig(seed=4, env_steps=120, learning_starts=64, threads=1)
        env = truth_env(max_actions=10)
        net = AgentNet.from_assessor(WEIGHTS, seed=4)
        train_dqn(env, net, config, lambda k: episode_seed(4, k, 0))
        return serialise(net)

    first, second = train(), train()
    assert first == second
    assert first != serialise(AgentNet.from_assessor(WEIGHTS, seed=4))  # it did learn


def test_an_agent_on_a_gate_starts_from_the_gates_specialist():
    """The shipped assessor is a gate file: the agent's body is its specialist's."""
    from spm_bluesky.ml.card import GATE, GENERALIST, WEIGHTS

    on_gate = AgentNet.from_assessor(GATE, seed=2).features.state_dict()
    on_specialist = AgentNet.from_assessor(WEIGHTS, seed=2).features.state_dict()
    on_generalist = AgentNet.from_assessor(GENERALIST, seed=2).features.state_dict()
    assert all(torch.equal(on_gate[k], on_specialist[k]) for k in on_specialist)
    assert on_generalist["1.weight"].shape != on_specialist["1.weight"].shape  # wider


def test_shipped_agent_matches_its_card_and_the_shipped_assessor():
    """The card names this very file (sha256) and the assessor whose body it was built on."""
    import hashlib

    from spm_bluesky.ml.agent.dqn import AGENT_WEIGHTS
    from spm_bluesky.ml.assessor import load_assessor

    card = json.loads(AGENT_WEIGHTS.with_name("agent.card.json").read_text())
    data = AGENT_WEIGHTS.read_bytes()
    assert card["sha256"] == hashlib.sha256(data).hexdigest()
    assert card["size_bytes"] == len(data) < 10 * 2**20
    assert card["model_id"] == load_agent().model_id
    assert card["assessor"]["model_id"] == load_assessor().model_id
    assert all(goal["met"] for goal in card["held_out"]["goals"].values())
    assert card["held_out"]["report"]["episodes"] == 500


# -- the registry of policies by name -----------------------------------------------------


def test_policies_are_looked_up_by_name_in_one_registry(tmp_path):
    from spm_bluesky.ml.agent.policies import (
        INSTRUMENT_POLICIES,
        POLICY_NAMES,
        MissingAgentError,
        OraclePolicy,
        policy_by_name,
    )
    from spm_bluesky.protocols import Policy

    assert set(INSTRUMENT_POLICIES) < set(POLICY_NAMES)
    assert isinstance(policy_by_name("random", seed=3), RandomPolicy)
    assert isinstance(policy_by_name("heuristic"), HeuristicPolicy)
    agent = policy_by_name("agent")
    assert isinstance(agent, DQNAgent) and agent.model_id == load_agent().model_id
    oracle = policy_by_name("oracle", truth=lambda: "blunt")
    assert isinstance(oracle, OraclePolicy) and oracle.model_id == "oracle:Sim:TipState"
    for name in POLICY_NAMES:
        made = policy_by_name(name, truth=lambda: "good")
        assert isinstance(made, Policy) and made.name == name
    # Same seed, same choices: the random policy is seeded through the registry.
    mask = np.ones(len(ACTIONS), dtype=bool)
    first, second = policy_by_name("random", seed=5), policy_by_name("random", seed=5)
    assert [first.act({}, mask).action for _ in range(8)] == \
        [second.act({}, mask).action for _ in range(8)]
    with pytest.raises(ValueError, match="evaluation only"):
        policy_by_name("oracle")
    with pytest.raises(ValueError, match="unknown policy"):
        policy_by_name("greedy")
    with pytest.raises(MissingAgentError, match="no weight file"):
        policy_by_name("agent", agent=tmp_path / "none.pt")


def test_the_oracle_from_a_label_acts_as_the_oracle_of_that_single_defect():
    """One oracle, two sources of truth: the env's tip state and the twin's true class."""
    from spm_bluesky.ml.agent.policies import OraclePolicy
    from spm_bluesky.twin.config import TipConfig
    from spm_bluesky.twin.tip import add_defect, good_tip

    config = TipConfig()
    mask = np.ones(len(ACTIONS), dtype=bool)
    for tip_class in TipClass:
        rng = np.random.default_rng(0)
        state = good_tip(rng, config)
        if tip_class is not TipClass.GOOD:
            state = add_defect(state, tip_class, rng, config)
        by_state = OraclePolicy(lambda state=state: state, config).act({}, mask)
        by_label = OraclePolicy.from_label(lambda c=tip_class: c.value).act({}, mask)
        assert by_state == by_label


def test_an_agent_on_a_wider_assessor_takes_its_widths(tmp_path):
    """The agent's body is the assessor's: built from a wider assessor's file, it has that
    file's widths, and its own weight file loads back at them."""
    torch.manual_seed(2)
    assessor_path = tmp_path / "assessor.pt"
    assessor_path.write_bytes(serialise(TipNet(stages_for(1.5), robust=True)))
    net = AgentNet.from_assessor(assessor_path, seed=0)
    assert net.stages == stages_for(1.5) and net.width == 2 * 192
    assert Learner(net, DQNConfig()).target.stages == net.stages
    path = tmp_path / "agent.pt"
    path.write_bytes(serialise(net))
    agent = load_agent(path)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(agent.net.state_dict()[key], value)
