"""slabbench: a reproducible benchmark suite for Bayesian model compression."""

__version__ = "0.1.0"
