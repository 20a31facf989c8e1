"""Recording streams to disk: layout (store), segment writer, sidecars and recovery."""
