"""The rank pipeline: run folder, sampling, scoring, estimation (SI-SPEC §1-5)."""
