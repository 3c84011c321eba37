"""Lifecycles: the phase protocols a run follows, one file each, looked up by the method's ``schedule``.

=============  ==============  ===============================================================
``schedule``   file            phases
=============  ==============  ===============================================================
``none``       ``dense.py``    ``train`` (the shared dense pretraining)
``init``       ``at_init.py``  ``prune`` (``on_init``) → ``train``
``during``     ``during.py``   ``train`` with the method's hooks (initial masks from ``on_init``)
``after``      ``after.py``    shared dense pretraining → ``prune`` → ``finetune``
``iterative``  ``iterative.py`` ``[prune → rewind → train] × levels`` after a dense level 0 (IMP)
=============  ==============  ===============================================================

A lifecycle is a function ``(run: Run) -> Outcome`` registered in :data:`LIFECYCLES` under the schedule
a method declares (:meth:`prunekit.methods.Pruner.schedule_for`); :func:`prune_once` is the pruning step
they share, and the :class:`Facts` it registers with are what the sweep, the cost estimate, resume checks
and the report know of it.
"""
from . import after, at_init, dense, during, iterative  # noqa: F401  (each registers its lifecycle)
from .base import LIFECYCLES, Facts, Outcome, facts_for, lifecycle_facts, prune_once

__all__ = ["LIFECYCLES", "Facts", "Outcome", "facts_for", "lifecycle_facts", "prune_once"]
