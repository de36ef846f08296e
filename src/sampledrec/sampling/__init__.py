"""Sampling: the policy, the keyed draw, caps, objections and the sampler.

The types of the seam between the sampler and the log are re-exported here, so that the log
(above sampling in the dependency order) and other sinks import them from the package.
"""

from .record import DecisionRecord, DecisionSink

__all__ = ["DecisionRecord", "DecisionSink"]
