"""The bottom layer every other layer may import: errors, the config schema and its sections, seeds, device.

Nothing here imports another fedfm package (tests/test_layout.py checks the layering).
"""
