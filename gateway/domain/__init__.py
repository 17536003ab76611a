"""Domain logic: pure functions and value objects, no I/O."""
