"""Timing: the engine that times contenders side by side (engine.py) and export-attn --attention-impl auto,
which races the variants with it and keeps the fastest that passes the check (auto.py). Beneath deploy/, whose
pipeline runs auto, and beneath bench/, whose bench-attn reports with it."""
