"""The bottom floor, torch-free: errors, settings, the budget and cost records, trial records
and atomic file writes. Reading a study's settings imports nothing heavier than this."""
