"""Experiments: each takes models, data and a config dataclass and returns a result dataclass."""
