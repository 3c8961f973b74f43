"""A local MKA1-compatible issuer: the same exchange endpoints, validation and error shapes,
real signed JWTs and a JWKS. The upstream for ``broker dev`` and for the tests."""

from broker.sim.app import SimulatorConfig, create_simulator

__all__ = ["SimulatorConfig", "create_simulator"]
