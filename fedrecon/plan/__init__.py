"""The arrival plan: which client learns which classes, from which samples, in which round.

Everything random here (class order, samples, split, arrival times, dropout, sampling,
revisits) comes from ``scenario.seed``; each concern draws from its own stream, so that
changing, say, the dropout leaves the class deal as it was.

Several tasks due to one client in one round (a client back from an absence, two
Poisson arrivals in one round, a revisit) are merged into ONE :class:`Arrival`: the
server sends a client at most one message a round, and the client learns all of it
then ("learns it when it returns").
"""

from fedrecon.plan.build import make_plan
from fedrecon.plan.records import Arrival, Plan, merge_arrivals
from fedrecon.plan.timeline import GRID_CLIENTS, summary, timeline

__all__ = ["Arrival", "Plan", "make_plan", "merge_arrivals", "summary", "timeline", "GRID_CLIENTS"]
