"""What both sides of a run put on or read off the wire: Flower records (records), the files a FAB
carries (fab), the secure-aggregation maths (secagg), a partner's identity and signatures under it
(secagg_identity) and its parameters (secagg_params), update compression (compression), norms and
clipping of updates (updates), and how much one partner's update counts (weights). The one place
below `client/` and `server/` that imports flwr; task code elsewhere in `common/` does not. Above
config: its parameters come from the run config."""
