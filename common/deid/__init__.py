"""De-identification at the partner: personal data in its texts masked before tokenization
(deidentify), with the Presidio recognizers behind it (recognizers). Presidio is the optional `deid`
extra."""
