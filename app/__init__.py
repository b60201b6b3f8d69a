"""Self-improving text classification service (Predictions For Pre-training Language Models)."""
