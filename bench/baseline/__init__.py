"""The build a user would write straight from the brief, kept for side-by-side numbers."""
