"""The tip-conditioning agent: the gym environment over the twin, Double DQN, the baseline
policies, online learning, learning from stored runs, and the agent's evaluation."""
