"""What both sides of a run put on or read off the wire: Flower records and the secure-aggregation
primitives. The one place below `client/` and `server/` that imports flwr; task code in
`common/*.py` does not."""
