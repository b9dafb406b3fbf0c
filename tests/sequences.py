"""Test sequences shared by several test modules."""

UNIT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVV"  # 70 aa, E. coli-like
SINGLE_DOUBLED_SHORT = f""">single description here
{UNIT}
>doubled
{UNIT}{UNIT}
>short
MSTNPKPQRKTKRNTNRRPQDVKFPGG
"""
