"""A partner's differential-privacy budget: sample-level accounting, σ calibration and the
persistent privacy ledger (ledger), calibrations kept on disk (sigma_cache), the DP plan of a round
(planner), the partner's secret kept beside its ledger (partner_secret), a ledger checked against
the audit log (ledger_audit) and recognised by its rows (ledger_identity). It reads no data set:
data/ stands above it."""
