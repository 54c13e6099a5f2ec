"""Tasks a user copies: each folder holds a task file, its README and how to make its data."""
