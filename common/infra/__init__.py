"""Plumbing that knows nothing of models, data or privacy: atomic, self-checking JSON files
(storage), stopping exactly the processes a command started (processes), logging set-up and what a
person sees of it (logs, console), a node's key files (keys), the machine a measurement ran on
(machine) and whether a round fits in its memory (resources). It imports nothing of common but
common.errors."""
