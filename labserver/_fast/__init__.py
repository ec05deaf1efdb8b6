"""The private tier: what exists only to be fast, and every undocumented part it relies on.
"""
