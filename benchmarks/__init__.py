"""Measurements that set Consortium's defaults (results JSON in results/)."""
