"""What a model scores, and what an answer about private rows costs: a model run over labelled data
(scoring), metrics as pure functions (metrics), scores per group of people (groups), calibration
(calibration), the privacy audit's canaries and maths (audit) and the evaluation oracle's budget
(oracle)."""
