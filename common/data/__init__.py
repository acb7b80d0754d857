"""A partner's text data: CSV / TSV / JSONL files read into a TextDataset, keyed held-out splits and
corrections (text), and the embedded demo data set (synthetic). The token-classification data lives
with its task (common/tasks/tokens.py); which rows a partner uses in a run is common.partner_rows
and common.partition, which read the run config."""
