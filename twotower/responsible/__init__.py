"""Responsible personalization. The feedback-loop simulator (:mod:`~twotower.responsible.simulation`), its
oracle and choice model (:mod:`~twotower.responsible.oracle`), measures (:mod:`~twotower.responsible.measures`)
and figure (:mod:`~twotower.responsible.plot`) import no torch, so they run beside the service. See
docs/responsible.md.
"""
