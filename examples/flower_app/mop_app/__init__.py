"""Federated Mixture-of-Prompts with libmop as a Flower App (see docs/FLOWER.md)."""
