"""Reproduce the paper's Tables 1 and 2: teachers, single-task, partial MTL and the five KD variants."""
