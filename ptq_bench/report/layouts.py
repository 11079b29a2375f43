"""Names of the paper layouts a recipe may ask for, without importing pandas (for `recipe.py`).

`report/paper.py:LAYOUTS` defines each layout; a test checks that its keys are exactly these names.
"""

LAYOUT_NAMES = ("bitnet_table3", "bitnet_b158", "lr_stability")
