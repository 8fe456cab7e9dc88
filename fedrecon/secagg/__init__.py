"""Secure aggregation of the class statistics: the server learns only the round's sum.

``ring`` encodes float64 statistics exactly into the integers mod 2^128 and expands masks;
``shamir`` shares secrets t-of-n; ``layout`` lays a client's statistics (and adapter
update) out as one vector of the round's shape; ``protocol`` is the SecAgg+-style
exchange (Bell et al., 2020) for one round, client and server sides, without Flower.
"""
