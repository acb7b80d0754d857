"""The coordinator side: the Flower ServerApp, aggregation maths, checkpoints and run outputs."""
