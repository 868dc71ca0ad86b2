"""Commands over finished run dirs: `rare view`, `rare compare`, `rare export`, and the dataset card."""
