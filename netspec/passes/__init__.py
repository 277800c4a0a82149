"""Rewrites of a net between parsing and running: proto-to-proto passes before building (phase filtering, Split
insertion, wiring checks; ``graph``) and the inference-only folding of built modules (``fold``)."""
