"""Where snapshots and blob bytes come from: git servers now, the Hugging Face Hub later."""
