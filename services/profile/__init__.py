"""The profile service: author records, works, and the profile page's read model."""
