"""The policy: sampling (vLLM or transformers), fine-tuning on the best of K, RRHF, and PPO with
its losses and rollouts."""
