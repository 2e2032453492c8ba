"""Hugging Face Hub repositories: the file list from the Hub's API, contents by HTTP range."""
